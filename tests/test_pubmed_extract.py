"""`biomed pubmed extract`: PubMed XML -> JSONL corpus.

Fixtures in tests/fixtures/pubmed/ are hand-written in the exact format of the real baseline and
update files (pubmed20n0014, pubmed21n1298): `baseline.xml` holds one case per record, and
`update.xml` a newer version of a baseline record, a PMID repeated with a newer version in the
same file, an empty abstract, a book chapter and a `DeleteCitation`. `malformed.xml` breaks in
its third record. Truncated .gz files are made from these inside the tests.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest

from biomed import sources
from biomed.errors import BiomedError, InputError
from biomed.lm.corpus import (
    Deletion,
    ExtractStats,
    _LatestIndex,
    extract,
    iter_pubmed_records,
    partial_path,
    pubmed_main,
)

FIXTURES = Path(__file__).parent / "fixtures" / "pubmed"
BASELINE = FIXTURES / "baseline.xml"
UPDATE = FIXTURES / "update.xml"
MALFORMED = FIXTURES / "malformed.xml"


def records(path: Path) -> dict[str, dict]:
    """The last record of each PMID in a file (deletions left out)."""
    return {r["pmid"]: r for r in iter_pubmed_records(path) if not isinstance(r, Deletion)}


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def summary_counts(line: str) -> str:
    """The summary line without its timing part, which varies."""
    return line.split(";")[0]


# ---------------------------------------------------------------------------------------------
# One record, one case


def test_structured_abstract_is_labelled_and_fields_are_exact():
    rec = records(BASELINE)["10001"]  # its CommentsCorrections cites PMID 17018272: not its own
    assert rec == {
        "pmid": "10001",
        "title": "Pleural effusion on chest radiographs: a structured reading study.",
        "abstract": (
            "BACKGROUND: Small pleural effusions are often missed on frontal radiographs.\n"
            "METHODS: Two readers scored 120 radiographs for blunting of the costophrenic angle.\n"
            "RESULTS: Agreement was substantial (kappa 0.71).\n"
            # the empty `LEVEL OF EVIDENCE: 4` section (a real pattern) is skipped
            "CONCLUSIONS: A structured reading helps."
        ),
        "year": 2000,
        "language": "eng",
        "mesh": ["Humans", "Pleural Effusion", "Radiography, Thoracic"],
    }


def test_inline_markup_and_mathml_keep_their_text():
    rec = records(BASELINE)["10002"]
    assert rec["title"] == "Variants near HHIP and the CO2 response."
    assert rec["abstract"] == (
        "Background: Lung function differs between the sexes (n = 303,612). "
        "The 13C signal and δH (OH) were recorded; the fit reached R 2 = 0.74."
    )
    assert rec["year"] == 2020 and rec["mesh"] == []


def test_medline_date_gives_its_first_year():
    rec = records(BASELINE)["10003"]  # <MedlineDate>1998 Dec-1999 Jan</MedlineDate>
    assert rec["year"] == 1998
    assert rec["language"] == "ita"
    assert rec["title"] == "[Chest radiography in the dental patient]."  # not VernacularTitle
    assert rec["abstract"] == "Chest radiographs of 40 dental patients were reviewed."


def test_other_abstract_is_ignored():
    recs = records(BASELINE)
    # English Abstract plus a Spanish OtherAbstract: only the English one
    assert recs["10004"]["abstract"] == "OBJECTIVE: To test procalcitonin as a marker of ischaemia."
    # only an OtherAbstract (a PIP summary): the record has no abstract
    assert recs["10005"]["abstract"] == ""


def test_records_without_abstract_are_yielded_with_an_empty_abstract():
    assert records(BASELINE)["10006"] == {
        "pmid": "10006", "title": "Letter: thoracic radiographs in sheep.", "abstract": "",
        "year": 1979, "language": "eng", "mesh": [],
    }
    assert records(UPDATE)["20002"]["abstract"] == ""  # <AbstractText/> + CopyrightInformation


def test_update_file_yields_versions_in_order_then_deletions():
    items = list(iter_pubmed_records(UPDATE))
    keys = [i.pmid if isinstance(i, Deletion) else i["pmid"] for i in items]
    assert keys == ["10008", "20001", "20002", "20001", "20003", "10007", "99999"]
    assert items[-2:] == [Deletion("10007"), Deletion("99999")]
    assert items[1]["abstract"] == "Version 1 of the abstract."
    assert items[3]["abstract"] == "Version 2 of the abstract."


def test_book_chapter_is_a_record():
    assert records(UPDATE)["20003"] == {
        "pmid": "20003", "title": "Pneumothorax",
        "abstract": "A pneumothorax is air in the pleural space.",
        "year": 2021, "language": "eng", "mesh": [],
    }


# ---------------------------------------------------------------------------------------------
# The corpus across files


EXPECTED_PMIDS = ["10001", "10002", "10003", "10004", "10008", "20001", "20003"]


def test_extract_applies_updates_and_deletions_across_files(tmp_path):
    out = tmp_path / "corpus.jsonl"
    lines: list[str] = []
    stats = extract([BASELINE, UPDATE], out, log=lines.append)

    rows = read_jsonl(out)
    assert [r["pmid"] for r in rows] == EXPECTED_PMIDS
    by_pmid = {r["pmid"]: r for r in rows}
    # 10008: the update file's version replaces the baseline's
    assert by_pmid["10008"]["title"] == "Cardiomegaly on portable radiographs (revised)."
    assert by_pmid["10008"]["mesh"] == ["Cardiomegaly", "Humans"]
    # 20001: repeated in the same file, version 2 last: only version 2
    assert by_pmid["20001"]["abstract"] == "Version 2 of the abstract."
    # 10007 (baseline) is deleted by the update's DeleteCitation; 99999 was never read
    assert "10007" not in by_pmid
    assert rows[0] == records(BASELINE)["10001"]

    assert stats == ExtractStats(read=13, written=7, no_abstract=3, deleted=1, duplicates=2,
                                 seconds=stats.seconds, delete_requests=2)
    assert stats.read == stats.written + stats.no_abstract + stats.duplicates + stats.deleted
    assert lines[0].startswith("[1/2] baseline.xml: 8 records (6 with abstract), 0 deletions;")
    assert lines[1].startswith("[2/2] update.xml: 5 records (4 with abstract), 2 deletions;")
    assert summary_counts(lines[-1]) == (
        "read 13 records, wrote 7, without abstract 3, deleted 1 (2 PMIDs in DeleteCitation), "
        "duplicates 2 (superseded versions)")
    assert lines[-1].endswith(" records/s")


def test_files_apply_in_the_order_given(tmp_path):
    out = tmp_path / "corpus.jsonl"
    stats = extract([UPDATE, BASELINE], out, log=lambda _: None)
    rows = {r["pmid"]: r for r in read_jsonl(out)}
    # the deletion came before 10007 was read, and the baseline's 10008 is now the latest
    assert "10007" in rows
    assert rows["10008"]["abstract"] == "First version of the abstract."
    assert (stats.read, stats.written, stats.deleted, stats.duplicates) == (13, 8, 0, 2)


def test_gzip_input_gives_the_same_corpus(tmp_path):
    gz = tmp_path / "pubmed21n0002.xml.gz"
    gz.write_bytes(gzip.compress(UPDATE.read_bytes()))
    extract([BASELINE, gz], tmp_path / "a.jsonl", log=lambda _: None)
    extract([BASELINE, UPDATE], tmp_path / "b.jsonl", log=lambda _: None)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_output_is_replaced_and_no_temporary_file_is_left(tmp_path):
    out = tmp_path / "corpus.jsonl"
    out.write_text("old content\n")
    extract([BASELINE], out, log=lambda _: None)
    assert [r["pmid"] for r in read_jsonl(out)] == ["10001", "10002", "10003", "10004",
                                                    "10007", "10008"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file, the last good PMID and the reason; what was read is kept


def truncated_gzip(xml: bytes, cut_before: bytes) -> bytes:
    """A gzip stream that stops (no final block, no trailer) just before `cut_before`."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip header
    return c.compress(xml[: xml.index(cut_before)]) + c.flush(zlib.Z_SYNC_FLUSH)


def test_truncated_gzip_names_file_and_last_good_pmid_and_keeps_earlier_records(tmp_path):
    gz = tmp_path / "pubmed20n0001.xml.gz"
    gz.write_bytes(truncated_gzip(BASELINE.read_bytes(), b"<ArticleTitle>Procalcitonin"))
    out = tmp_path / "corpus.jsonl"
    out.write_text('{"pmid": "1"}\n')  # a corpus from an earlier run: never replaced by a partial
    lines: list[str] = []
    with pytest.raises(InputError) as err:
        extract([UPDATE, gz], out, log=lines.append)
    assert str(err.value) == (
        f"{gz}: truncated or corrupt gzip stream (Compressed file ended before the "
        "end-of-stream marker was reached); last good record: PMID 10003")
    assert err.value.path == str(gz)
    assert isinstance(err.value, BiomedError)  # the CLI's one-line, exit-2 path
    # the update file's records, then the truncated file's complete records
    assert out.read_text() == '{"pmid": "1"}\n'
    assert [r["pmid"] for r in read_jsonl(partial_path(out))] == ["10008", "20001", "20003",
                                                                  "10001", "10002", "10003"]
    assert lines[-1].startswith(f"stopped at bad input; kept what was read in "
                                f"{partial_path(out)}: read 8 records, wrote 6")
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["corpus.jsonl", "corpus.jsonl.partial", gz.name]


def test_gzip_cut_anywhere_keeps_a_prefix_of_the_corpus(tmp_path):
    blob = gzip.compress(BASELINE.read_bytes())
    gz = tmp_path / "cut.xml.gz"
    gz.write_bytes(blob[: len(blob) * 2 // 3])
    out = tmp_path / "corpus.jsonl"
    with pytest.raises(InputError, match=r"truncated or corrupt gzip stream .*; last good record: "
                                         r"PMID 100\d\d$"):
        extract([gz], out, log=lambda _: None)
    assert not out.exists()
    kept = [r["pmid"] for r in read_jsonl(partial_path(out))]
    full = ["10001", "10002", "10003", "10004", "10007", "10008"]
    assert 1 <= len(kept) < len(full) and kept == full[: len(kept)]


def test_malformed_xml_names_file_and_last_good_pmid_and_keeps_earlier_records(tmp_path):
    out = tmp_path / "corpus.jsonl"
    with pytest.raises(InputError) as err:
        extract([BASELINE, UPDATE, MALFORMED], out, log=lambda _: None)
    assert str(err.value) == (f"{MALFORMED}: malformed XML (mismatched tag: line 232, column 66); "
                              "last good record: PMID 10002")
    # the first two files in full (deletion and newer versions applied), then the malformed
    # file's 10001 and 10002, which supersede the baseline's copies
    assert [r["pmid"] for r in read_jsonl(partial_path(out))] == [
        "10003", "10004", "10008", "20001", "20003", "10001", "10002"]


def test_iter_records_raises_input_error_at_the_bad_record():
    seen = []
    with pytest.raises(InputError, match="last good record: PMID 10002"):
        for rec in iter_pubmed_records(MALFORMED):
            seen.append(rec["pmid"])
    assert seen == ["10001", "10002"]


def test_missing_file_is_an_input_error_before_any_output(tmp_path):
    missing = tmp_path / "pubmed20n9999.xml.gz"
    out = tmp_path / "corpus.jsonl"
    with pytest.raises(InputError) as err:
        extract([BASELINE, missing], out, log=lambda _: None)
    assert str(err.value) == f"{missing}: no such file"
    assert not out.exists()
    with pytest.raises(InputError, match=r"cannot read \(No such file or directory\); no complete "
                                         r"record before the error$"):
        list(iter_pubmed_records(missing))


def test_xml_that_is_not_pubmed_is_an_input_error(tmp_path):
    other = tmp_path / "other.xml"
    other.write_text('<?xml version="1.0"?>\n<MedlineCitationSet><x/></MedlineCitationSet>\n')
    with pytest.raises(InputError, match="not PubMed XML: root element <MedlineCitationSet>"):
        list(iter_pubmed_records(other))


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_extract_writes_the_corpus_and_prints_the_summary(tmp_path, capsys):
    out = tmp_path / "corpus.jsonl"
    assert pubmed_main(["extract", str(BASELINE), str(UPDATE), "--out", str(out)]) == 0
    assert [r["pmid"] for r in read_jsonl(out)] == EXPECTED_PMIDS
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary_counts(last).startswith("read 13 records, wrote 7,")


def test_cli_help_and_usage(capsys):
    assert pubmed_main(["extract", "--help"]) == 0
    assert "--out PATH" in capsys.readouterr().out
    assert pubmed_main(["extract", str(BASELINE)]) == 2  # --out missing
    assert "the following arguments are required: --out" in capsys.readouterr().err


def test_cli_lets_input_errors_propagate(tmp_path):
    with pytest.raises(InputError, match="malformed XML"):
        pubmed_main(["extract", str(MALFORMED), "--out", str(tmp_path / "c.jsonl")])


# ---------------------------------------------------------------------------------------------
# The PMID index


def test_latest_index_switches_to_a_dense_array_with_the_same_answers():
    sparse, dense = _LatestIndex(), _LatestIndex(min_dense=4, cap=1000)
    ops = [("set", 5, 0), ("set", 7, 1), ("set", 2, 2), ("set", 9, 3), ("set", 5, 4),
           ("pop", 7, None), ("pop", 8, None), ("set", 5000, 5), ("set", 800, 6),
           ("pop", 5000, None), ("set", 7, 7), ("pop", 2, None)]
    for op, pmid, line in ops:
        a = sparse.set(pmid, line) if op == "set" else sparse.pop(pmid)
        b = dense.set(pmid, line) if op == "set" else dense.pop(pmid)
        assert a == b, (op, pmid)
    assert dense._dense is not None and sparse._dense is None  # the switch happened
    assert sorted(dense.lines()) == sorted(sparse.lines()) == [3, 4, 6, 7]


# ---------------------------------------------------------------------------------------------
# Real files (`biomed data fetch pubmed`)


@pytest.fixture(scope="module")
def real_corpus(tmp_path_factory):
    if sources.status("pubmed") != "cached":
        pytest.skip("the real PubMed files are not cached: run `biomed data fetch pubmed`")
    files = [sources.path("pubmed", "pubmed20n0014.xml.gz"),
             sources.path("pubmed", "pubmed21n1298.xml.gz")]
    out = tmp_path_factory.mktemp("pubmed") / "corpus.jsonl"
    lines: list[str] = []
    stats = extract(files, out, log=lines.append)
    return stats, lines, read_jsonl(out)


@pytest.mark.data
def test_real_files_counts(real_corpus):
    stats, lines, rows = real_corpus
    # per file: the known facts. pubmed21n1298 has 18,446 <Abstract> elements, but one of them
    # (PMID 34085931) holds only an empty <AbstractText/>: 18,445 abstracts with text.
    assert lines[0].startswith(
        "[1/2] pubmed20n0014.xml.gz: 30,000 records (14,832 with abstract), 0 deletions;")
    assert lines[1].startswith(
        "[2/2] pubmed21n1298.xml.gz: 20,788 records (18,445 with abstract), 20 deletions;")
    # 14,832 + 18,445 = 33,277 abstracts; 5 are superseded versions inside pubmed21n1298
    # (PMID 30271887 appears as versions 1-4, 33728380 and 34017925 as versions 1-2), so
    # 33,272 are written. None of the 20 deleted PMIDs occurs in either file: deleted 0.
    assert (stats.read, stats.written, stats.no_abstract, stats.deleted, stats.duplicates,
            stats.delete_requests) == (50_788, 33_272, 17_511, 0, 5, 20)
    assert len(rows) == 33_272 == len({r["pmid"] for r in rows})


@pytest.mark.data
def test_real_files_records(real_corpus):
    _, _, rows = real_corpus
    by_pmid = {r["pmid"]: r for r in rows}
    first = by_pmid["399296"]  # the first record of pubmed20n0014
    assert first["title"].startswith("Monitoring of bacteriological contamination")
    assert (first["year"], first["language"]) == (1979, "eng")
    assert first["mesh"][:3] == ["Abattoirs", "Animals", "Bacteriological Techniques"]
    assert by_pmid["10704411"]["abstract"].startswith("BACKGROUND: Drugs of abuse have")
    assert "\nRESULTS: We present evidence" in by_pmid["10704411"]["abstract"]
    assert "34085931" not in by_pmid  # empty abstract
    assert sum(r["abstract"].startswith("BACKGROUND: ") for r in rows) == 2_482
    assert sum(r["language"] == "eng" for r in rows) == 30_456
    assert all(r["year"] is not None for r in rows)  # Year or MedlineDate in every record
    assert min(r["year"] for r in rows) == 1976
