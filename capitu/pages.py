"""HTML from Jinja2 templates (`capitu/templates/`): the study report and `capitu serve`'s
page share one style sheet and are edited as HTML. Autoescaping is on: text from a model or
a user is shown as text, never as markup."""

from __future__ import annotations

import base64

from jinja2 import Environment, PackageLoader, select_autoescape

ENVIRONMENT = Environment(loader=PackageLoader("capitu", "templates"), autoescape=select_autoescape(["html"]),
                          trim_blocks=True, lstrip_blocks=True)
ENVIRONMENT.filters["base64"] = lambda data: base64.b64encode(data).decode("ascii")


def render(template: str, **context) -> str:
    return ENVIRONMENT.get_template(template).render(**context)
