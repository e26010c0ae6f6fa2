import csv
import hashlib
import statistics

from tests.fixtures.samples import detection


def test_detection_sample_is_deterministic(tmp_path):
    a = detection.write_detection_csv(tmp_path / "a.csv", seed=0)
    b = detection.write_detection_csv(tmp_path / "b.csv", seed=0)
    c = detection.write_detection_csv(tmp_path / "c.csv", seed=1)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_detection_sample_has_the_daigt_v2_schema_and_is_small(tmp_path):
    path = detection.write_detection_csv(tmp_path / "d.csv")
    with path.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["text", "label", "prompt_name", "source", "RDizzl3_seven"]
    assert path.stat().st_size < 1_000_000
    labels = [int(r["label"]) for r in rows]
    assert set(labels) == {0, 1} and abs(sum(labels) / len(labels) - 0.5) < 0.05
    assert len({r["prompt_name"] for r in rows}) == 5


def test_detection_sample_varies_in_length_and_content():
    rows = detection.detection_rows()
    words = [len(r["text"].split()) for r in rows]
    assert min(words) < 40 and max(words) > 200
    assert statistics.pstdev(words) > 25
    assert len({r["text"] for r in rows}) == len(rows), "every essay should be distinct"
    # The prompt must not give the label away: each prompt has both classes.
    for prompt in {r["prompt_name"] for r in rows}:
        assert {r["label"] for r in rows if r["prompt_name"] == prompt} == {0, 1}


def test_every_registered_sample_file_is_built(cache):
    from tests import fixtures
    from tests.fixtures import samples

    for name in samples.SAMPLE_FILES:
        path = fixtures.sample_data_dir(cache) / name
        assert path.is_file() and 0 < path.stat().st_size < 1_000_000, name
