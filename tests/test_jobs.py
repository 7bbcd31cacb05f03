"""Corpus-scale jobs (invoice_vlm.jobs): predict --out as sharded JSONL, resume, bad files as error records, eval
over a job folder, and the same jobs on a local Ray (2 CPUs) giving the same results; synth --ray byte for byte."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from invoice_vlm import jobs
from invoice_vlm.cli import app
from invoice_vlm.common import InvoiceVLMError
from invoice_vlm.infer.files import iter_records

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing may try the network

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module: 2 CPUs, no dashboard; the jobs find it initialised and use it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture()
def docs(tmp_path):
    """Five one-page images, a two-page PDF and a broken PNG: 7 files, 4 shards of 2."""
    from reportlab.pdfgen import canvas

    folder = tmp_path / "docs"
    folder.mkdir()
    for k in range(5):
        im = Image.new("RGB", (160, 200), "white")
        d = ImageDraw.Draw(im)
        for j in range(k + 1):
            d.text((8, 10 + 14 * j), f"AB {k}{j}", fill="black")
        im.save(folder / f"p{k}.png")
    c = canvas.Canvas(str(folder / "two.pdf"), pagesize=(200, 240))
    for t in ("one", "two"):
        c.drawString(20, 200, t)
        c.showPage()
    c.save()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    return folder


def shards(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("shard-"))


def records(out) -> list[dict]:
    return [json.loads(line) for name in shards(out) for line in (out / name).read_text().splitlines()]


def job_cfg(docs, out, **kw) -> jobs.PredictJobConfig:
    return jobs.PredictJobConfig(inputs=[str(docs)], out=str(out), model=kw.pop("model"), max_new_tokens=6,
                                 min_new_tokens=3, batch_size=2, shard_size=2, device="cpu", **kw)


def test_predict_out_writes_shards_in_input_order_and_a_bad_file_is_one_error_record(tmp_path, tiny_model, docs):
    out = tmp_path / "out"
    r = invoke("predict", "--model", tiny_model, "--max-new-tokens", 4, "--batch-size", 2, "--shard-size", 2,
               "--out", out, docs)
    assert r.exit_code == 1, r.output  # a file failed: exit 1, but the job is done
    [line] = error_lines(r)
    assert "broken.png: image does not open" in line
    assert shards(out) == [f"shard-0000{k}.jsonl" for k in range(4)]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    rows = records(out)
    names = sorted(p.name for p in docs.iterdir())  # broken, p0..p4, two
    assert [(r_["file"].rsplit("/", 1)[-1], r_["page"]) for r_ in rows] == [
        ("broken.png", None), *((n, 1) for n in names[1:6]), ("two.pdf", 1), ("two.pdf", 2)]
    assert rows[0] == {"file": str((docs / "broken.png").resolve()), "page": None, "error": line[len("error: "):]}
    assert all(r_.keys() == {"file", "page", "text"} for r_ in rows[1:])
    job = json.loads((out / "job.json").read_text())
    assert job["complete"] and job["pages"] == 7 and job["errors"] == 1
    assert [len(s["files"]) for s in job["shards"]] == [2, 2, 2, 1] and job["identity"]["task"] == "ocr"
    assert {"torch", "transformers", "python"} <= job["environment"].keys()

    r = invoke("predict", "--model", tiny_model, "--max-new-tokens", 4, "--task", "extract", "--out",
               tmp_path / "fields", docs / "p0.png")
    assert r.exit_code == 0, r.output
    [row] = records(tmp_path / "fields")
    assert row.keys() == {"file", "page", "text", "fields", "json_valid"} and isinstance(row["fields"], dict)


def test_a_folder_holding_another_job_or_other_files_is_refused_in_one_line(tmp_path, tiny_model, docs):
    out = tmp_path / "out"
    assert invoke("predict", "--model", tiny_model, "--max-new-tokens", 2, "--out", out, docs / "p0.png").exit_code == 0
    for args, match in (((docs / "p0.png", "--task", "extract"), "task='ocr'"),
                        ((docs / "p0.png", docs / "p1.png"), "other input files (1 files, now 2)")):
        r = invoke("predict", "--model", tiny_model, "--max-new-tokens", 2, "--out", out, *args)
        assert r.exit_code == 1 and "Traceback" not in r.output
        [line] = [x for x in r.stderr.splitlines() if x.strip()]
        assert "holds another predict job" in line and match in line
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    r = invoke("predict", "--model", tiny_model, "--out", tmp_path / "busy", docs / "p0.png")
    assert r.exit_code == 1 and "holds no predict job" in r.stderr
    r = invoke("predict", "--model", tiny_model, "--ray", docs / "p0.png")
    assert r.exit_code == 1 and "--ray needs --out" in r.stderr


def test_missing_ray_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InvoiceVLMError, match=r"pip install 'invoice-vlm\[ray\]'"):
        jobs.check_ray_importable()


def test_ray_job_equals_the_single_process_job_page_for_page(tmp_path, reading_model, docs, ray_cluster):
    seen = {"local": [], "ray": []}
    local = jobs.run_predict(job_cfg(docs, tmp_path / "local", model=str(reading_model)), seen["local"].append,
                             progress=False)
    on_ray = jobs.run_predict(job_cfg(docs, tmp_path / "ray", model=str(reading_model), ray="local", actors=1),
                              seen["ray"].append, progress=False)
    assert local["pages"] == on_ray["pages"] == 7 and local["errors"] == on_ray["errors"] == 1
    assert len(seen["ray"]) == 1 and seen["ray"] == seen["local"]  # one line for the bad file, from the driver
    assert shards(tmp_path / "ray") == shards(tmp_path / "local")
    for name in shards(tmp_path / "local"):  # the same records, in the same order, byte for byte
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    texts = [r["text"] for r in records(tmp_path / "ray") if "text" in r]
    assert all(texts) and len(set(texts)) > 3  # real text, page by page
    ray_job = json.loads((tmp_path / "ray" / "job.json").read_text())
    assert ray_job["complete"] and ray_job["environment"]["ray"] == ray_cluster.__version__

    with pytest.raises(InvoiceVLMError, match="need 5 CPUs; the cluster has 2"):  # actors would starve rendering
        jobs.run_predict(job_cfg(docs, tmp_path / "big", model=str(reading_model), ray="local", actors=4),
                         progress=False)
    assert not (tmp_path / "big").exists()  # refused before anything is written
    bad = tmp_path / "no-weights"
    bad.mkdir()
    (bad / "config.json").write_text((reading_model / "config.json").read_text())
    with pytest.raises(InvoiceVLMError, match="no-weights: cannot load model"):  # raised in an actor: one line
        jobs.run_predict(job_cfg(docs, tmp_path / "bad", model=str(bad), ray="local"), progress=False)


def test_interrupted_job_resumes_without_redoing_finished_shards(tmp_path, reading_model, docs, monkeypatch,
                                                                ray_cluster):
    args = ["predict", "--model", reading_model, "--max-new-tokens", 4, "--batch-size", 2, "--shard-size", 2, docs]
    assert invoke(*args, "--out", tmp_path / "whole").exit_code == 1  # the broken file; the job completes

    write = jobs.write_shard
    calls = []

    def write_then_die(out, shard, rows):
        if calls:
            raise KeyboardInterrupt  # the run dies after its first shard
        calls.append(shard.name)
        write(out, shard, rows)

    monkeypatch.setattr(jobs, "write_shard", write_then_die)
    out = tmp_path / "out"
    r = invoke(*args, "--out", out)
    assert r.exit_code == 130 and "interrupted" in r.stderr
    assert shards(out) == ["shard-00000.jsonl"] and not json.loads((out / "job.json").read_text())["complete"]
    monkeypatch.setattr(jobs, "write_shard", write)
    (out / ".shard-00001.jsonl.partial").write_text('{"half": ')  # what a SIGKILL mid-write leaves
    first = (out / "shard-00000.jsonl").stat()

    r = invoke(*args, "--out", out, "--ray")  # resumed on Ray: the same job
    assert r.exit_code == 1, r.output
    assert "(1 already done)" in r.stdout and len(error_lines(r)) == 0  # the bad file was in the finished shard
    again = (out / "shard-00000.jsonl").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not rewritten
    assert not (out / ".shard-00001.jsonl.partial").exists()
    assert records(out) == records(tmp_path / "whole")
    assert json.loads((out / "job.json").read_text())["complete"]


def test_eval_scores_a_predict_folder_as_it_scores_the_model(tmp_path, reading_model, text_dataset):
    images = sorted((text_dataset / "test").glob("*.png"))
    r = invoke("predict", "--model", reading_model, "--max-new-tokens", 5, "--out", tmp_path / "job", *images)
    assert r.exit_code == 0, r.output
    r = invoke("eval", "--predictions", tmp_path / "job", "--data", text_dataset, "--out", tmp_path / "from-job",
               "--no-report")
    assert r.exit_code == 0, r.output
    r = invoke("eval", "--model", reading_model, "--data", text_dataset, "--out", tmp_path / "direct",
               "--max-new-tokens", 5, "--no-report")
    assert r.exit_code == 0, r.output
    for name in ("predictions.jsonl", "bleu.json", "ter.json"):
        assert (tmp_path / "from-job" / name).read_text() == (tmp_path / "direct" / name).read_text()
    from invoice_vlm.data import read_split
    from invoice_vlm.evaluate import read_predictions

    with pytest.raises(InvoiceVLMError, match="--task ocr job; this evaluation is --task extract"):
        read_predictions(tmp_path / "job", read_split(text_dataset, "test"), [], task="extract")


def test_eval_matches_manifest_pdf_pages_to_the_jobs_pdf_pages(tmp_path, reading_model, docs):
    from invoice_vlm.data import read_manifest
    from invoice_vlm.evaluate import read_predictions

    (tmp_path / "two.txt").write_text("two")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"id": "d-2", "pdf": "docs/two.pdf", "page": 1,
                                                         "text": "two.txt"}) + "\n")
    r = invoke("predict", "--model", reading_model, "--max-new-tokens", 3, "--out", tmp_path / "job", docs / "two.pdf")
    assert r.exit_code == 0, r.output
    samples = read_manifest(tmp_path / "manifest.jsonl", tmp_path / "pages")
    skipped = []
    kept, predictions = read_predictions(tmp_path / "job", samples, skipped, "ocr", root=tmp_path)
    page2 = [x for x in iter_records(tmp_path / "job") if x["page"] == 2]
    assert [s_.id for s_ in kept] == ["d-2"] and predictions == [page2[0]["text"]] and not skipped


def test_eval_on_ray_equals_eval_in_one_process(tmp_path, reading_model, text_dataset, ray_cluster):
    base = ["eval", "--model", reading_model, "--data", text_dataset, "--max-new-tokens", 5, "--no-report"]
    assert invoke(*base, "--out", tmp_path / "one").exit_code == 0
    r = invoke(*base, "--out", tmp_path / "ray", "--ray")
    assert r.exit_code == 0, r.output
    for name in ("predictions.jsonl", "bleu.json", "ter.json"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "one" / name).read_text()
    assert json.loads((tmp_path / "ray" / "metrics.json").read_text())["ray"] == "local"


def test_synth_on_ray_equals_synth_byte_for_byte(tmp_path, ray_cluster):
    common = ["--n", 4, "--dpi", 40, "--max-items", 3, "--split", "train=0.5,test=0.5", "--shard-size", 1, "--pdf",
              "--seed", 3]
    assert invoke("synth", "--out", tmp_path / "local", *common).exit_code == 0
    r = invoke("synth", "--out", tmp_path / "ray", "--ray", *common)
    assert r.exit_code == 0, r.output

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    local, ray = files(tmp_path / "local"), files(tmp_path / "ray")
    assert local.keys() == ray.keys() and len(local) > 8
    for name in local:
        if name != "dataset.json":
            assert ray[name] == local[name], name
    a, b = (json.loads(x["dataset.json"]) for x in (local, ray))
    for d in (a, b):
        d.pop("seconds"), d.pop("environment")
    assert a == b and b["complete"]


def test_bench_predict_ray_variant(monkeypatch, reading_model, ray_cluster):
    from invoice_vlm.bench import predict as ib

    def pages(n, **kw):
        out = []
        for k in range(n):
            im = Image.new("RGB", (160, 200), "white")
            ImageDraw.Draw(im).text((8, 10), f"AB {k}", fill="black")
            out.append((im, f"AB {k}"))
        return out

    monkeypatch.setattr(ib, "bench_pages", pages)
    rows = ib.bench(model=str(reading_model), n=4, batch_size=2, max_new_tokens=4, min_new_tokens=4, ray=True, actors=1)
    variants = [r["variant"] for r in rows]
    assert variants == ["naive (generate per page)", "engine", "predict --out (1 process)",
                        "predict --out --ray (1 actors)"]
    assert rows[3]["identical"] == "4/4" and rows[3]["vs_single"] > 0 and rows[2]["vs_single"] == 1.0
    assert rows[2]["cer"] == rows[1]["cer"]  # the job gives the engine's text


def test_the_commands_in_docs_scale_md_exist():
    """Every --flag docs/scale.md shows on an invoice-vlm command line is one that command accepts."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "scale.md").read_text()
    checked = 0
    for words, rest in re.findall(r"invoice-vlm ((?:bench )?[a-z-]+)([^\n`|#]*)", text):
        help_text = runner.invoke(app, [*words.split(), "--help"], terminal_width=200).output
        for flag in re.findall(r"(--[a-z][a-z-]*)", rest):
            assert flag in help_text, (words, flag)
            checked += 1
    assert checked >= 20


def test_predict_out_with_the_row_reader_and_preparing_processes(tmp_path, row_model_ctc, row_pages):
    """The shipped architecture through the job runner, its pages prepared by two worker processes: the records
    hold what the engine reads, in input order."""
    from PIL import Image

    from invoice_vlm.data import read_split
    from invoice_vlm.infer import Predictor

    files = [s.image for s in read_split(row_pages, "test")[:3]]
    out = tmp_path / "out"
    r = invoke("predict", "--model", row_model_ctc, "--workers", 2, "--batch-size", 2, "--out", out, *files)
    assert r.exit_code == 0, r.output
    rows = records(out)
    engine = Predictor.from_pretrained(str(row_model_ctc), device="cpu")
    assert [r_["file"] for r_ in rows] == [str(f.resolve()) for f in files]
    assert [r_["text"] for r_ in rows] == engine.predict([Image.open(f).convert("RGB") for f in files])
    assert json.loads((out / "job.json").read_text())["identity"]["decode"] == "auto"


def test_a_row_readers_pages_are_prepared_where_they_are_rendered(tmp_path, row_model_ctc, docs):
    """On Ray, a row reader's page travels as its prepared rows (render_file with the reading unit): the rows
    come back as rows.page_rows cuts them, and an unreadable file is still one error row."""
    import numpy as np

    from invoice_vlm.models import reading_unit_of
    from invoice_vlm.rows import page_rows

    unit = reading_unit_of(row_model_ctc)
    for name in ("p4.png", "two.pdf"):
        found = jobs.render_file({"shard": 0, "index": 0, "file": str(docs / name)}, None, 100, unit=unit.to_dict())
        pages = jobs.read_pages(str(docs / name), None, 100)
        assert [r["page"] for r in found] == [k for k, _ in pages] and all(r["error"] == "" for r in found)
        for r, (_, image) in zip(found, pages):
            rows = jobs.unpack_rows(r["data"], r["widths"], unit.height)
            expected = page_rows(image, unit)
            assert len(rows) == len(expected) > 0
            assert all(np.array_equal(a, b) for a, b in zip(rows, expected))
    [bad] = jobs.render_file({"shard": 0, "index": 1, "file": str(docs / "broken.png")}, None, 100,
                             unit=unit.to_dict())
    assert bad["page"] == 0 and "broken.png" in bad["error"] and bad["widths"] == b""
    assert jobs.unpack_rows(*jobs.pack_rows([]).values(), unit.height) == []


def test_a_row_reader_on_ray_writes_what_one_process_writes(tmp_path, row_model_ctc, docs, ray_cluster):
    """Pages prepared by Ray's rendering tasks and read by an actor: the same records, byte for byte, as one process
    with page workers."""
    cfg = dict(model=str(row_model_ctc))
    local = jobs.run_predict(job_cfg(docs, tmp_path / "local", workers=2, **cfg), progress=False)
    on_ray = jobs.run_predict(job_cfg(docs, tmp_path / "ray", ray="local", actors=1, **cfg), progress=False)
    assert local["pages"] == on_ray["pages"] == 7 and local["errors"] == on_ray["errors"] == 1
    for name in shards(tmp_path / "local"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    texts = [r["text"] for r in records(tmp_path / "ray") if "text" in r]
    assert len(texts) == 7 and sum(map(len, texts)) > 0
