"""`capitu pairs`: grammatical minimal pairs from Universal Dependencies treebanks (after BLiMP and
MultiBLiMP): a sentence, and the same sentence with one word replaced by the form of the same
lemma that breaks one agreement and nothing else.

Phenomena: subject-verb number and person (the finite verb, or the copula or auxiliary that
carries the agreement), determiner-noun and adjective-noun gender and number, and a predicative
adjective or passive participle with its subject in gender and number. A replacement form must
be attested in the given treebanks for that lemma with exactly the swapped feature; a pair is
skipped when that form is also a form of the lemma with the original features (syncretism),
when the word is part of a multiword token (`do` = `de` + `o`), when the agreement is not there
in the original, or when the subject is coordinated or relative (its agreement is not local).

What reading samples of the pairs found, and the rule each finding became (README, "Grammar"):
- a noun whose form does not show the feature (`o/a presidente`, `o/os lápis`; the treebanks'
  own forms, and the endings of COMMON_GENDER) agrees with either value: no gender or number
  pair for its determiners, adjectives or predicates;
- Portuguese lets a plural noun phrase take a first-person verb (`os cidadãos gostaríamos`, "we
  citizens"): a plural first-person swap only with a personal pronoun subject (`eles`), and no
  person swap of `ser` before its subject (`somos muitas as vozes`);
- a predicate that is also a noun (`técnicos`) need not agree in gender: none;
- a replacement must not change the spelling norm as well (`electrónica` -> `eletrônico`,
  `européia` -> `europeias`): among the attested forms, the one closest in spelling, and for
  adjectives and determiners only one that keeps all but the last two letters (a plural's `s` aside)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from capitu.errors import UserError

SWAPS = {"Number": {"Sing": "Plur", "Plur": "Sing"}, "Gender": {"Masc": "Fem", "Fem": "Masc"},
         "Person": {"3": "1", "1": "3"}}


@dataclass
class Word:
    id: int
    form: str
    lemma: str
    upos: str
    feats: dict[str, str]
    head: int
    deprel: str
    space_after: bool


@dataclass
class Sentence:
    sent_id: str
    text: str
    words: list[Word]
    multiword: dict[int, tuple[int, str, bool]]  # first word id -> (last word id, surface form, space after)


def read_conllu(path: Path) -> list[Sentence]:
    """The sentences of a CoNLL-U file; a file that is not CoNLL-U is a UserError."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    sentences, comments, words, multiword = [], {}, [], {}
    for number, line in enumerate([*lines, ""], start=1):
        if not line.strip():
            if words:
                sentences.append(Sentence(comments.get("sent_id", f"{Path(path).name}:{number}"),
                                          comments.get("text", ""), words, multiword))
            comments, words, multiword = {}, [], {}
        elif line.startswith("#"):
            key, _, value = line[1:].partition("=")
            comments[key.strip()] = value.strip()
        else:
            columns = line.split("\t")
            if len(columns) != 10:
                raise UserError(f"{path}:{number}: not CoNLL-U (a word line has 10 tab-separated columns)")
            ident, form, lemma, upos, _, feats, head, deprel, _, misc = columns
            space_after = "SpaceAfter=No" not in misc.split("|")
            if "-" in ident:
                first, last = ident.split("-")
                multiword[int(first)] = (int(last), form, space_after)
            elif "." not in ident:  # empty nodes carry no surface word
                try:
                    parsed = {k: v for k, v in (f.split("=", 1) for f in feats.split("|"))} if feats != "_" else {}
                    words.append(Word(int(ident), form, lemma, upos, parsed, int(head), deprel, space_after))
                except ValueError:
                    raise UserError(f"{path}:{number}: not CoNLL-U (bad id, head or features)") from None
    if not sentences:
        raise UserError(f"{path}: no CoNLL-U sentences")
    return sentences


def surface(sentence: Sentence, replace: dict[int, str] | None = None) -> str:
    """The sentence's text from its tokens and their spacing, with word id -> form replaced."""
    replace, pieces, skip_to = replace or {}, [], 0
    for word in sentence.words:
        if word.id <= skip_to:
            continue
        if word.id in sentence.multiword:
            skip_to, form, space = sentence.multiword[word.id]
        else:
            form, space = replace.get(word.id, word.form), word.space_after
        pieces.append(form + (" " if space else ""))
    return "".join(pieces).strip()


def in_multiword(sentence: Sentence, word_id: int) -> bool:
    return any(first <= word_id <= last for first, (last, _, _) in sentence.multiword.items())


# Nouns of these endings are mostly of both genders, the article alone telling (`o/a artista`, `o/a
# presidente`, `o/a estudante`, `o/a ouvinte`): however rarely a treebank shows both, their form does not.
COMMON_GENDER = ("ista", "ente", "ante", "inte")

Lexicon = dict[tuple[str, str], dict[frozenset, Counter]]


def build_lexicon(sentences: list[Sentence]) -> Lexicon:
    """(lemma, UPOS) -> features -> forms seen with them (lower case), from the treebanks' words."""
    lexicon: Lexicon = defaultdict(lambda: defaultdict(Counter))
    for sentence in sentences:
        for word in sentence.words:
            lexicon[(word.lemma.lower(), word.upos)][frozenset(word.feats.items())][word.form.lower()] += 1
    return lexicon


def shared_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def inflected(a: str, b: str) -> bool:
    """Whether two forms differ as an inflection does, in their last letters only (a plural's
    `s` aside: `seus`/`suas`), not in spelling (`electrónica`/`eletrônico`, `européia`/`europeias`)."""
    if a.endswith("s") and b.endswith("s"):
        a, b = a[:-1], b[:-1]
    return shared_prefix(a, b) >= min(len(a), len(b)) - 2


def also_spelled(forms: Counter, form: str, count: int) -> bool:
    """Whether `form`, seen `count` times with some features, is also a form with the features
    `forms` counts: seen with them at least a tenth as often (one annotation slip is not)."""
    return forms.get(form, 0) > 0 and forms[form] >= count / 10


def swapped_form(lexicon: Lexicon, word: Word, feature: str) -> str | None:
    """The attested form of the word's lemma with `feature` swapped and every other feature the
    same, the closest in spelling; None if none is attested, if it is also a form with the
    original features, or if it changes more than an inflection's ending would."""
    value = word.feats.get(feature)
    if value not in SWAPS[feature]:
        return None
    forms = lexicon.get((word.lemma.lower(), word.upos), {})
    own = forms.get(frozenset(word.feats.items()), Counter())
    swapped = forms.get(frozenset({**word.feats, feature: SWAPS[feature][value]}.items()), Counter())
    original = word.form.lower()
    usual = max(swapped.values(), default=0) / 10  # a form seen less often is more likely a slip of annotation
    candidates = [f for f, n in swapped.items() if n >= usual and f != original and not also_spelled(own, f, n)]
    if not candidates:
        return None
    form = max(candidates, key=lambda f: (shared_prefix(f, original), swapped[f]))
    if word.upos not in ("VERB", "AUX") and not inflected(form, original):
        return None
    return form[0].upper() + form[1:] if word.form[:1].isupper() else form


def shows(lexicon: Lexicon, word: Word, feature: str) -> bool:
    """Whether the word's form shows its `feature`: its lemma has no form with the other value
    spelled the same (`presidente` is both genders, `lápis` both numbers)."""
    value = word.feats.get(feature)
    form = word.form.lower()
    if value not in SWAPS[feature] or feature == "Gender" and form.rstrip("s").endswith(COMMON_GENDER):
        return False
    forms = lexicon.get((word.lemma.lower(), word.upos), {})
    own = forms.get(frozenset(word.feats.items()), Counter())
    other = forms.get(frozenset({**word.feats, feature: SWAPS[feature][value]}.items()), Counter())
    return not also_spelled(other, form, own.get(form, 1))


def agreements(sentence: Sentence, lexicon: Lexicon) -> list[tuple[str, Word, str]]:
    """(phenomenon, the word to change, the feature) for each agreement in the sentence."""
    by_id = {w.id: w for w in sentence.words}
    children = defaultdict(list)
    for word in sentence.words:
        children[word.head].append(word)
    nouns = {lemma for lemma, upos in lexicon if upos == "NOUN"}
    found = []
    for word in sentence.words:
        head = by_id.get(word.head)
        if head is None:
            continue
        if word.deprel in ("nsubj", "nsubj:pass") and word.upos in ("NOUN", "PROPN", "PRON") \
                and word.feats.get("PronType") != "Rel" and not any(c.deprel == "conj" for c in children[word.id]):
            carriers = [head] + [c for c in children[head.id] if c.deprel in ("cop", "aux", "aux:pass")]
            verb = next((c for c in carriers if c.feats.get("VerbForm") == "Fin"), None)
            if verb is not None and verb.feats.get("Number") == word.feats.get("Number", verb.feats.get("Number")):
                found.append(("subject-verb number", verb, "Number"))
                subject_person = word.feats.get("Person", "3")
                we_the_nouns = verb.feats.get("Number") == "Plur" and word.feats.get("PronType") != "Prs"
                ser_first = verb.lemma.lower() == "ser" and verb.id < word.id
                if verb.feats.get("Person") == subject_person and not (
                        subject_person == "3" and we_the_nouns) and not ser_first:
                    found.append(("subject-verb person", verb, "Person"))
            predicate = head if head.upos == "ADJ" or head.feats.get("VerbForm") == "Part" else None
            if predicate is not None and predicate.lemma.lower() not in nouns \
                    and any(c.deprel in ("cop", "aux:pass") for c in children[head.id]):
                for feature in ("Gender", "Number"):
                    if shows(lexicon, word, feature) and predicate.feats.get(feature) == word.feats[feature]:
                        found.append((f"predicative {feature.lower()}", predicate, feature))
        if head.upos == "NOUN" and (word.deprel, word.upos) in (("det", "DET"), ("amod", "ADJ")):
            kind = "determiner-noun" if word.upos == "DET" else "adjective-noun"
            for feature in ("Gender", "Number"):
                if shows(lexicon, head, feature) and head.feats.get(feature) == word.feats.get(feature):
                    found.append((f"{kind} {feature.lower()}", word, feature))
    return found


def treebank_files(path: Path) -> list[Path]:
    """A CoNLL-U file itself; a folder, its *.conllu files in name order (none where it has none)."""
    path = Path(path)
    return sorted(path.glob("*.conllu")) if path.is_dir() else [path]


def minimal_pairs(paths: list[Path]) -> list[dict]:
    """Every minimal pair the treebanks give, in file and sentence order."""
    sentences = {path: read_conllu(path) for path in paths}
    lexicon = build_lexicon([s for group in sentences.values() for s in group])
    pairs, seen = [], set()
    for path, group in sentences.items():
        for sentence in group:
            good = surface(sentence)
            if sentence.text and good != sentence.text:
                continue  # spacing not rebuilt exactly: skip rather than guess
            for phenomenon, word, feature in agreements(sentence, lexicon):
                form = None if in_multiword(sentence, word.id) else swapped_form(lexicon, word, feature)
                if form is None or (sentence.sent_id, word.id, feature) in seen:
                    continue
                seen.add((sentence.sent_id, word.id, feature))
                pairs.append({"phenomenon": phenomenon, "good": good, "bad": surface(sentence, {word.id: form}),
                              "position": word.id, "word": word.form, "replacement": form,
                              "sent_id": sentence.sent_id, "source": Path(path).name})
    return pairs


def read_pairs(path: Path) -> list[dict]:
    """A pairs file as `capitu pairs` writes it."""
    try:
        pairs = [json.loads(line) for line in Path(path).read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"cannot read pairs from {path}: {getattr(error, 'strerror', None) or error}") from None
    if not pairs or not all(isinstance(p, dict) and {"phenomenon", "good", "bad"} <= set(p) for p in pairs):
        raise UserError(f"{path}: not a pairs file (JSON lines with phenomenon, good and bad)")
    return pairs
