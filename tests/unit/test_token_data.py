"""Token classification data: CoNLL reading, row checks, sub-token alignment, entity extraction and scores."""

import pytest

from peftkit.data import read_conll
from peftkit.errors import PeftkitError
from peftkit.tasks.token_data import (
    IGNORE_INDEX,
    align_labels,
    check_rows,
    entities,
    entity_scores,
    inside_tag,
    scheme_of,
)

CONLL_4 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_conll_with_several_columns_takes_the_last_as_the_tag(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL_4)
    rows = read_conll(path)
    assert rows == [
        {"tokens": ["EU", "rejects", "German"], "ner_tags": ["B-ORG", "O", "B-MISC"], "line": 3},
        {"tokens": ["Peter", "Blackburn"], "ner_tags": ["B-PER", "I-PER"], "line": 7},
    ]


def test_tab_separated_conll_without_a_trailing_blank_line(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text("@paulwalk\tO\nIt\tO\n\nEmpire\tB-facility\nState\tI-facility")
    assert [r["ner_tags"] for r in read_conll(path)] == [["O", "O"], ["B-facility", "I-facility"]]


def test_a_text_file_that_is_not_conll_is_refused_with_its_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("This is prose.\nword B-PER\nmore\n")
    with pytest.raises(PeftkitError, match=r"not in CoNLL format: line\(s\) 3 hold a single column"):
        read_conll(path)
    (tmp_path / "empty.conll").write_text("-DOCSTART- O\n\n\n")
    with pytest.raises(PeftkitError, match="no sentences"):
        read_conll(tmp_path / "empty.conll")
    with pytest.raises(PeftkitError, match="does not exist"):
        read_conll(tmp_path / "missing.conll")


def test_rows_are_checked_and_named():
    where = ["train.jsonl line 1", "train.jsonl line 2", "train.jsonl line 3"]
    ok = [["a", "b"], ["c"], ["d"]]
    check_rows(ok, [["O", "O"], ["B-X"], ["O"]], where, "tokens", "ner_tags")
    with pytest.raises(PeftkitError, match=r"1 row\(s\) have a different number of words and tags \(train.jsonl "
                                           r"line 2; the first: 1 words, 2 tags\)"):
        check_rows(ok, [["O", "O"], ["B-X", "O"], ["O"]], where, "tokens", "ner_tags")
    with pytest.raises(PeftkitError, match=r"'ner_tags' must hold a list of tags.*train.jsonl line 3 hold\(s\) str"):
        check_rows(ok, [["O", "O"], ["O"], "O"], where, "tokens", "ner_tags")
    with pytest.raises(PeftkitError, match=r"'tokens' must hold a list of words.*line 1 hold\(s\) str"):
        check_rows(["a b", ["c"], ["d"]], [["O"], ["O"], ["O"]], where, "tokens", "ner_tags")
    with pytest.raises(PeftkitError, match=r"1 row\(s\) have no words \(train.jsonl line 2\)"):
        check_rows([["a"], [], ["d"]], [["O"], [], ["O"]], where, "tokens", "ner_tags")


def test_first_sub_token_carries_the_tag():
    # [CLS] New York ##er is [SEP]: words 0, 1, 1, 2
    word_ids = [None, 0, 1, 1, 2, None]
    tags = ["B-LOC", "I-LOC", "O"]
    ids = {t: i for i, t in enumerate(["O", "B-LOC", "I-LOC"])}
    word_labels = [ids[t] for t in tags]
    assert align_labels(word_ids, word_labels, False) == [IGNORE_INDEX, 1, 2, IGNORE_INDEX, 0, IGNORE_INDEX]
    inside = [ids[inside_tag(t)] for t in ["O", "B-LOC", "I-LOC"]]
    assert align_labels(word_ids, word_labels, True, inside) == [IGNORE_INDEX, 1, 2, 2, 0, IGNORE_INDEX]
    # a B- word split in two: its second piece continues the entity rather than starting another
    assert align_labels([None, 0, 0, None], [ids["B-LOC"]], True, inside) == [IGNORE_INDEX, 1, 2, IGNORE_INDEX]


def test_schemes():
    assert scheme_of(["O", "B-PER", "I-PER", "E-PER", "S-LOC"]) == "prefixed"
    assert scheme_of(["O", "PER", "LOC"]) == "plain"
    with pytest.raises(PeftkitError, match="use one tag scheme"):
        scheme_of(["B-PER", "LOC"])


def test_entities_in_each_scheme():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"], "prefixed") == [("PER", 0, 1), ("LOC", 3, 3)]
    assert entities(["S-PER", "O", "B-ORG", "E-ORG"], "prefixed") == [("PER", 0, 0), ("ORG", 2, 3)]
    assert entities(["PER", "PER", "O", "LOC"], "plain") == [("PER", 0, 1), ("LOC", 3, 3)]


def test_entity_scores_count_whole_entities():
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    preds = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    scores = entity_scores(refs, preds, "prefixed")
    # gold: PER, LOC, ORG; predicted: PER, ORG(wrong span type), ORG -> 2 of 3 right both ways
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["f1_PER"] == 1.0 and scores["f1_LOC"] == 0.0 and scores["f1_ORG"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(5 / 6)
    # a partly found entity is a miss, not a fraction
    half = entity_scores([["B-PER", "I-PER"]], [["B-PER", "O"]], "prefixed")
    assert half["f1"] == 0.0 and half["accuracy"] == 0.5
