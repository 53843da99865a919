"""Every stage reads a webdataset shard as webdataset itself does (shared.wds_reader).

One fixture shard is written with webdataset's own TarWriter, with ugly cases: a key with dots in its
basename (webdataset's key ends at the first dot: ``a.b.c.jpg`` is field ``b.c.jpg`` of sample ``a``),
dotted directories in a key, directory members, upper-case extensions, members without a pair, a key
split by another sample, a top-level ``__meta__`` file. webdataset's ``WebDataset`` pipeline reading it is the
reference; the five readers (pool, write, train filter, training data, eval benchmark) must each see
exactly its samples that carry the fields they need.
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from shared.wds_reader import indexed_samples, read_samples

COMPLETE = ["000010011", "dir.x/sub/k1", "UP"]  # jpg + txt + json + cls, as webdataset reads them


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 256, 80, 120)).save(buf, format="JPEG")
    return buf.getvalue()


def _fields(key: str, n: int, upper: bool = False) -> dict:
    meta = {"uid": f"uid-{n}", "url": f"http://h/{n}"}
    fields = {"jpg": _jpeg(n), "txt": f"caption {n}".encode(), "json": json.dumps(meta).encode(),
              "cls": str(n % 3).encode()}
    return {"__key__": key, **{(k.upper() if upper else k): v for k, v in fields.items()}}


def _dir_member(sink: wds.TarWriter, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    sink.tarstream.addfile(info)


def _meta_member(sink: wds.TarWriter, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 2
    sink.tarstream.addfile(info, io.BytesIO(b"{}"))


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wds") / "00000.tar"
    with wds.TarWriter(str(path)) as sink:
        _meta_member(sink, "__index__")  # webdataset's metadata: never a sample
        sink.write(_fields("000010011", 0))  # img2dataset's key style
        sink.write(_fields("a.b.c", 1))  # members a.b.c.jpg ...: sample "a" with fields "b.c.jpg" ...
        _dir_member(sink, "dir.x")
        _dir_member(sink, "dir.x/sub")
        sink.write(_fields("dir.x/sub/k1", 2))
        sink.write(_fields("UP", 3, upper=True))  # UP.JPG, UP.TXT ...: fields are lower-cased
        sink.write({"__key__": "lone", "txt": b"a caption without an image"})
        sink.write({"__key__": "split", "jpg": _jpeg(4)})  # one key split by another sample: two samples
        sink.write({"__key__": "between", "txt": b"between"})
        sink.write({"__key__": "split", "txt": b"late caption", "json": b"{}", "cls": b"0"})
        sink.write({"__key__": "nocls", "jpg": _jpeg(5), "txt": b"caption 5",
                    "json": json.dumps({"uid": "uid-5", "url": "http://h/5"}).encode()})
    return path


@pytest.fixture(scope="module")
def official(shard) -> list[dict]:
    """The samples as webdataset's own pipeline reads them (bytes, no decoding)."""
    return list(wds.WebDataset(str(shard), shardshuffle=False, empty_check=False))


def _content(sample: dict) -> dict:
    """A sample without where it came from (``__url__``, ``__local_path__``)."""
    return {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}


def _with(samples: list[dict], *fields: str) -> list[dict]:
    return [s for s in samples if all(f in s for f in fields)]


def test_the_official_reading_of_the_fixture(official):
    keys = [s["__key__"] for s in official]
    assert keys == ["000010011", "a", "dir.x/sub/k1", "UP", "lone", "split", "between", "split", "nocls"]
    assert {"b.c.jpg", "b.c.txt", "b.c.json", "b.c.cls"} <= official[1].keys()
    assert [s["__key__"] for s in _with(official, "jpg", "txt", "json", "cls")] == COMPLETE


def test_both_modes_of_the_reader_are_webdatasets_reading(shard, official):
    assert [_content(s) for s in read_samples(shard)] == [_content(s) for s in official]
    with tarfile.open(shard) as tar:
        indexed = [{k: (tar.extractfile(v).read() if isinstance(v, tarfile.TarInfo) else v)
                    for k, v in _content(s).items()} for s in indexed_samples(tar)]
    assert indexed == [_content(s) for s in official]


def test_pool_reader(shard, official):
    from curation.pool import shard_samples

    got = [(key, jpg, caption, meta) for key, jpg, caption, meta in shard_samples(shard)]
    want = _with(official, "jpg", "txt", "json")
    assert [g[0] for g in got] == [s["__key__"] for s in want] == [*COMPLETE, "nocls"]
    assert [(g[1], g[2], g[3]) for g in got] == \
        [(s["jpg"], s["txt"].decode(), json.loads(s["json"])) for s in want]


def test_write_step_reader(shard, official, tmp_path):
    from curation.write import write_part_shards

    want = _with(official, "jpg", "txt", "json")
    kept = {json.loads(s["json"])["uid"]: 0.5 for s in want}
    kept["uid-1"] = 0.5  # the dotted key's uid: its fields are b.c.*, so no sample carries it
    counts = write_part_shards(shard, kept, tmp_path, shard_size=100, blur_faces=False)
    written = list(wds.WebDataset(str(tmp_path / "00000-0000.tar"), shardshuffle=False))
    assert counts["written"] == len(written) == len(want) == 4
    by_uid = {json.loads(s["json"])["uid"]: s for s in want}
    for s in written:
        source = by_uid[json.loads(s["json"])["uid"]]
        assert (s["jpg"], s["txt"]) == (source["jpg"], source["txt"])


def test_train_filter_reader(shard, official, tmp_path):
    from curation.train_filter import read_pairs

    (tmp_path / "hq-00000.tar").write_bytes(shard.read_bytes())
    jpgs, captions = read_pairs(tmp_path)
    want = _with(official, "jpg", "txt")
    assert jpgs == [s["jpg"] for s in want] and captions == [s["txt"].decode() for s in want]
    assert len(want) == 4


def test_training_data_reader(shard, official):
    from training.shards import BadSampleCounter, ShardReader, fresh_position

    errors = BadSampleCounter()
    reader = ShardReader([str(shard)], seed=0, tag=1, reader=0, shuffle_buffer=1, on_error=errors)
    first_window = [s for s, _, visit in itertools.takewhile(lambda x: x[2] == 0,
                                                              reader.samples(fresh_position(0, 1)))]
    def items(sample):
        return sorted(_content(sample).items())

    assert sorted(map(items, first_window)) == sorted(map(items, official))
    assert errors.count == 0


def test_eval_benchmark_reader(shard, official, tmp_path):
    from evaluation.benchmarks.generic import webdataset

    (tmp_path / "classnames.txt").write_text("a\nb\nc\n")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "0.tar").write_bytes(shard.read_bytes())
    images = webdataset(tmp_path, "test")
    want = _with(official, "jpg", "cls")
    assert [int(s["cls"]) for s in want] == list(images.labels)
    assert [images.read_image(i).tobytes() for i in range(len(want))] == \
        [Image.open(io.BytesIO(s["jpg"])).tobytes() for s in want]
    assert len(want) == len(COMPLETE)
