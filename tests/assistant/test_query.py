"""One query image, decoded once: a DICOM is parsed once per query, CLIP's preprocessing and the embedding are done
once across the check, the search and the heatmaps, and the results are those of the image taken alone."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medxpert_utils.assistant import Assistant, QueryImage
from medxpert_utils.data.loading.transforms import ImageTransform
from medxpert_utils.report.schema import DiagnosisReport, Finding
from medxpert_utils.retrieval.explain import Explainer
from tests.assistant.test_assistant import assistant  # noqa: F401 - the fixture: stand-in engine and check
from tests.data.test_images import make_dicom


@pytest.fixture
def dicom_reads(monkeypatch):
    """Counts pydicom.dcmread calls (every DICOM decode of the package goes through it)."""
    import pydicom

    reads = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **kw: reads.append(1) or real(*a, **kw))
    return reads


def _chest_dicom(tmp_path):
    pixels = np.tile(np.linspace(200, 3800, 48).astype(np.uint16), (40, 1))
    path = tmp_path / "chest.dcm"
    path.write_bytes(make_dicom(pixels))
    return path


def test_a_dicom_query_is_parsed_once_for_check_search_caption_and_report(assistant, tmp_path,  # noqa: F811
                                                                          dicom_reads):
    path = _chest_dicom(tmp_path)
    report, cases = assistant.diagnose_with_cases(image=path, question="effusion?")
    assert dicom_reads == [1] and cases
    assert report.query == "chest.dcm" and assistant.last_check.in_distribution

    query = QueryImage.of(path)  # a door's query image: every step reads it, none decodes again
    assert dicom_reads == [1, 1] and query.facts.dicom and query.facts.modality == "DX"
    assistant.check_query(image=query)
    assistant.similar_cases(image=query, k=2)
    assistant.write_report([], image=query, question="effusion?")
    assert query.png() is query.png() and dicom_reads == [1, 1]


def test_the_same_object_handed_over_twice_is_wrapped_once(assistant, tmp_path, dicom_reads):  # noqa: F811
    path = str(_chest_dicom(tmp_path))
    assistant.check_query(image=path)
    assistant.search(image=path, k=2)
    assert dicom_reads == [1]
    assert assistant.query(path) is assistant.query(path)


def test_a_query_image_from_pixels_in_memory():
    grey = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8))
    query = QueryImage.of(grey, name="upload.png")
    assert query.image is grey and query.size == (8, 6) and query.name == "upload.png"
    assert query.facts.colourfulness == 0.0 and not query.facts.dicom
    assert QueryImage.of(query) is query
    photo = QueryImage.of(np.dstack([np.full((6, 8), 200), np.full((6, 8), 40), np.full((6, 8), 10)]).astype(np.uint8))
    assert photo.facts.colourfulness > 0.5 and np.asarray(photo.image).max() == 84
    assert Image.open(__import__("io").BytesIO(query.png())).size == (8, 6)


# --- CLIP on a tiny run ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests.retrieval.test_embed import make_indexed_run

    return make_indexed_run(tmp_path_factory.mktemp("query") / "run")


@pytest.mark.slow
def test_clip_preprocessing_and_embedding_once_across_check_search_and_heatmaps(tiny_run, monkeypatch,
                                                                               torch_one_thread):
    path = tiny_run.paths.manifest.parent.parent / "images" / "s004.png"
    helper = Assistant(tiny_run.run_dir)
    engine = helper.engine("fine_tuned")
    alone_hits = engine.search_image(path, 4)  # the image taken alone, before counting
    explainer = helper.explainer("fine_tuned")
    alone_map = explainer.explain(Image.open(path), "small left pleural effusion", "gradient")

    transforms, embeds = [], []
    real_call, real_embed = ImageTransform.__call__, engine.embed_pixels
    monkeypatch.setattr(ImageTransform, "__call__", lambda self, img, rng=None: transforms.append(1)
                        or real_call(self, img, rng))
    monkeypatch.setattr(engine, "embed_pixels", lambda pixels: embeds.append(1) or real_embed(pixels))
    query = QueryImage.of(path)
    check = helper.check_query(image=query)
    hits = helper.search(image=query, k=4)
    heat = helper.explain(query, "small left pleural effusion", method="gradient")
    helper.explain(query, "right pneumothorax", method="patch")
    report = DiagnosisReport(findings=[Finding(name="Edema", status="present")], generator="offline-retrieval")
    maps = helper.explain_findings(query, report, method="gradient")
    assert transforms == [1] and embeds == [1]

    assert check.kind == "image" and np.isfinite(check.score)
    assert [h.study_id for h in hits] == [h.study_id for h in alone_hits]
    assert np.allclose([h.score for h in hits], [h.score for h in alone_hits], atol=1e-6)
    assert np.array_equal(heat, alone_map) and maps["edema"].shape == heat.shape


@pytest.mark.slow
def test_the_neutral_text_is_embedded_once_per_explainer(tiny_run, monkeypatch):
    from medxpert_utils.retrieval import encoders
    from medxpert_utils.retrieval.explain import NEUTRAL_TEXT

    seen = []
    real = encoders.embed_texts
    monkeypatch.setattr(encoders, "embed_texts", lambda model, processor, texts, **kw: seen.extend(texts)
                        or real(model, processor, texts, **kw))
    explainer = Explainer.from_run(tiny_run.run_dir)
    image = Image.new("L", (40, 40), 90)
    first = explainer.explain(image, "small left pleural effusion", "patch")
    explainer.explain(image, "right pneumothorax", "patch")
    assert seen.count(NEUTRAL_TEXT) == 1 and seen.count("right pneumothorax") == 1
    assert np.array_equal(first, explainer.explain(image, "small left pleural effusion", "patch"))


@pytest.mark.slow
def test_warm_up_loads_what_a_first_text_and_image_query_need(tiny_run, monkeypatch):
    """After warm_up (the dashboard's preheated kernels call it) neither a text nor an image query, nor its heatmap,
    loads a model or embeds the heatmaps' neutral text; a second warm_up returns at once."""
    from medxpert_utils.models import clip
    from medxpert_utils.retrieval import encoders
    from medxpert_utils.retrieval.explain import NEUTRAL_TEXT
    from medxpert_utils.retrieval.ood import QueryChecker
    from medxpert_utils.retrieval.search import SearchEngine

    helper = Assistant(tiny_run.run_dir)
    helper.warm_up("fine_tuned")

    def no_load(*args, **kwargs):
        raise AssertionError("loaded after warm_up")

    for owner, name in ((clip, "load_clip"), (SearchEngine, "from_run"), (QueryChecker, "from_run"),
                        (Explainer, "from_run")):
        monkeypatch.setattr(owner, name, no_load)
    texts, real = [], encoders.embed_texts
    monkeypatch.setattr(encoders, "embed_texts", lambda model, processor, batch, **kw: texts.extend(batch)
                        or real(model, processor, batch, **kw))
    helper.check_query(text="left pleural effusion")
    assert helper.similar_cases(text="left pleural effusion", k=2)
    query = QueryImage.of(tiny_run.paths.manifest.parent.parent / "images" / "s001.png")
    helper.check_query(image=query)
    assert helper.similar_cases(image=query, k=2)
    helper.explain(query, "left pleural effusion")
    assert NEUTRAL_TEXT not in texts
    before = len(texts)
    helper.warm_up("fine_tuned")  # already warm: nothing runs again
    assert len(texts) == before
