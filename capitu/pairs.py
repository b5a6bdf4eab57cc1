"""`capitu pairs`: grammatical minimal pairs from Universal Dependencies treebanks (after BLiMP and
MultiBLiMP): a sentence, and the same sentence with one word replaced by the form of the same
lemma that breaks one agreement and nothing else.

Phenomena: subject-verb number and person (the finite verb, or the copula or auxiliary that
carries the agreement), determiner-noun and adjective-noun gender and number, and a predicative
adjective or passive participle with its subject in gender and number. A replacement form must
be attested in the given treebanks for that lemma with exactly the swapped feature; a pair is
skipped when that form is also a form of the lemma with the original features (syncretism),
when the word is part of a multiword token (`do` = `de` + `o`), when the agreement is not there
in the original, or when the subject is coordinated or relative (its agreement is not local)."""

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
        lines = Path(path).read_text(encoding="utf-8").splitlines()
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


Lexicon = dict[tuple[str, str], dict[frozenset, Counter]]


def build_lexicon(sentences: list[Sentence]) -> Lexicon:
    """(lemma, UPOS) -> features -> forms seen with them (lower case), from the treebanks' words."""
    lexicon: Lexicon = defaultdict(lambda: defaultdict(Counter))
    for sentence in sentences:
        for word in sentence.words:
            lexicon[(word.lemma.lower(), word.upos)][frozenset(word.feats.items())][word.form.lower()] += 1
    return lexicon


def swapped_form(lexicon: Lexicon, word: Word, feature: str) -> str | None:
    """The attested form of the word's lemma with `feature` swapped and every other feature the
    same; None if none is attested or if it is also a form with the original features."""
    value = word.feats.get(feature)
    if value not in SWAPS[feature]:
        return None
    forms = lexicon.get((word.lemma.lower(), word.upos), {})
    target = frozenset({**word.feats, feature: SWAPS[feature][value]}.items())
    if not forms.get(target):
        return None
    form = forms[target].most_common(1)[0][0]
    if form in forms.get(frozenset(word.feats.items()), ()) or form == word.form.lower():
        return None
    return form[0].upper() + form[1:] if word.form[:1].isupper() else form


def agreements(sentence: Sentence) -> list[tuple[str, Word, str]]:
    """(phenomenon, the word to change, the feature) for each agreement in the sentence."""
    by_id = {w.id: w for w in sentence.words}
    children = defaultdict(list)
    for word in sentence.words:
        children[word.head].append(word)
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
                if verb.feats.get("Person") == subject_person:
                    found.append(("subject-verb person", verb, "Person"))
            predicate = head if head.upos == "ADJ" or head.feats.get("VerbForm") == "Part" else None
            if predicate is not None and any(c.deprel in ("cop", "aux:pass") for c in children[head.id]):
                for feature in ("Gender", "Number"):
                    if feature in word.feats and predicate.feats.get(feature) == word.feats[feature]:
                        found.append((f"predicative {feature.lower()}", predicate, feature))
        if head.upos == "NOUN" and (word.deprel, word.upos) in (("det", "DET"), ("amod", "ADJ")):
            kind = "determiner-noun" if word.upos == "DET" else "adjective-noun"
            for feature in ("Gender", "Number"):
                if feature in word.feats and head.feats.get(feature) == word.feats[feature]:
                    found.append((f"{kind} {feature.lower()}", word, feature))
    return found


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
            for phenomenon, word, feature in agreements(sentence):
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
        pairs = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"cannot read pairs from {path}: {getattr(error, 'strerror', None) or error}") from None
    if not pairs or not all(isinstance(p, dict) and {"phenomenon", "good", "bad"} <= set(p) for p in pairs):
        raise UserError(f"{path}: not a pairs file (JSON lines with phenomenon, good and bad)")
    return pairs
