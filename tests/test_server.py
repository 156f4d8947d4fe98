"""The transcription server: OpenAI's audio API through FastAPI's test client and the official
`openai` client on a live loopback server, dynamic batching, limits and errors."""
from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from dllm_asr.server import ServerLimits, create_app, listen_on, request_options  # noqa: E402
from dllm_asr.transcription.long_form import transcribe_batch  # noqa: E402
from dllm_asr.transcription.options import TranscribeOptions  # noqa: E402
from tests.helpers import ASSETS, DATA  # noqa: E402

FAST = {"steps": "2", "length": "4"}  # the tiny random model: two steps over four positions


def post(client, path=ASSETS / "example.wav", data=None, headers=None, url="/v1/audio/transcriptions"):
    with open(path, "rb") as f:
        return client.post(url, files={"file": (path.name, f.read())}, data={"model": "whisper-1", **FAST, **(data or {})},
                           headers=headers or {})


@pytest.fixture()
def client(tiny_model):
    with TestClient(create_app(tiny_model, ServerLimits(max_wait_seconds=0.0), model_name="tiny")) as c:
        yield c


def test_every_response_format(client, tiny_model, real_clips):
    expected = transcribe_batch(tiny_model, [real_clips[0]], TranscribeOptions(steps=2, length=4))[0]
    answer = post(client)
    assert answer.status_code == 200 and answer.json() == {"text": expected.text}
    assert post(client, data={"response_format": "text"}).text == expected.text + "\n"
    srt_text = post(client, data={"response_format": "srt"}).text
    assert srt_text.startswith("1\n00:00:00,") and expected.text in srt_text
    assert post(client, data={"response_format": "vtt"}).text.startswith("WEBVTT")
    verbose = post(client, data={"response_format": "verbose_json"}).json()
    assert verbose["text"] == expected.text and verbose["duration"] == pytest.approx(61280 / 16000)
    assert verbose["segments"][0]["text"] == expected.text and verbose["dllm_asr"]["nfe"] == expected.nfe
    assert verbose["dllm_asr"]["tokens"] == expected.tokens
    # unknown fields are ignored, as OpenAI does; the extensions change the decoding
    assert post(client, data={"timestamp_granularities[]": "segment", "whatever": "x"}).status_code == 200
    assert post(client, data={"steps": "1", "response_format": "verbose_json"}).json()["dllm_asr"]["nfe"] == 1


def test_models_health_and_page(client):
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and "/v1/audio/transcriptions/steps" in page.text


def test_the_step_stream_shows_the_unmasking(client):
    answer = post(client, url="/v1/audio/transcriptions/steps")
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [chunk for chunk in answer.text.split("\n\n") if chunk]
    steps = [json.loads(e.split("data: ", 1)[1]) for e in events if e.startswith("event: step")]
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert len(steps) == 2 == done["nfe"]  # two steps, one event each
    assert steps[0]["tokens"].count(None) == 2 and steps[1]["tokens"].count(None) == 0  # half unmasked per step
    assert done["text"] == "".join(t for t in steps[-1]["tokens"] if t).strip()


@pytest.mark.parametrize("name, status, message", [
    ("corrupt.wav", 400, "cannot decode audio"), ("empty.wav", 400, "is empty"),
    ("zero_length.wav", 400, "contains no samples"), ("README.md", 400, "cannot decode audio")])
def test_bad_uploads_get_a_400_that_names_them(client, name, status, message):
    answer = post(client, DATA / name)
    assert answer.status_code == status
    error = answer.json()["error"]["message"]
    assert message in error and name in error and "Traceback" not in answer.text and "/tmp" not in error


def test_limits_key_and_bad_fields(tiny_model):
    limits = ServerLimits(max_upload_bytes=50_000, max_audio_seconds=1.0, api_key="sekret", max_wait_seconds=0.0)
    with TestClient(create_app(tiny_model, limits)) as c:
        key = {"Authorization": "Bearer sekret"}
        assert post(c).status_code == 401 and post(c, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert post(c, DATA / "stereo_44k.flac", headers=key).status_code == 413  # 77 kB
        too_long = post(c, DATA / "mono_8k.m4a", headers=key)
        assert too_long.status_code == 400 and "at most 1 s" in too_long.json()["error"]["message"]
    with TestClient(create_app(tiny_model, ServerLimits(max_wait_seconds=0.0))) as c:
        for data, message in [({"response_format": "xml"}, "response_format"), ({"steps": "0"}, "steps must be >= 1"),
                              ({"steps": "many"}, "steps: 'many' is not a valid int"), ({"language": "fr"}, "English only"),
                              ({"strategy": "ar"}, "diffusion, not left to right")]:
            answer = post(c, data=data)
            assert answer.status_code == 400 and message in answer.json()["error"]["message"], answer.text
        assert c.post("/v1/audio/transcriptions", data={"model": "x"}).status_code == 400  # no file


def test_length_groups_keep_short_clips_apart_from_long_ones_shortest_first():
    from dllm_asr.server import Job, length_groups

    def job(seconds):
        return Job(np.zeros(int(seconds * 16000), dtype=np.float32), TranscribeOptions(), None, None)

    jobs = [job(s) for s in (25.0, 1.0, 4.9, 9.0, 0.5, 12.0, 30.0)]
    groups = [[len(j.audio) / 16000 for j in group] for group in length_groups(jobs)]
    assert groups == [[0.5, 1.0, 4.9], [9.0, 12.0], [25.0, 30.0]]  # <= 5 s together; then within 2x
    assert length_groups([]) == []


def test_a_long_clip_is_decoded_apart_from_short_ones(tiny_model, real_clips, tmp_path):
    import soundfile

    soundfile.write(tmp_path / "short.wav", real_clips[0], 16000)
    soundfile.write(tmp_path / "long.wav", np.tile(real_clips[0], 4), 16000)  # 15.3 s
    app = create_app(tiny_model, ServerLimits(max_wait_seconds=1.0, max_batch=4))
    with TestClient(app) as c, concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda p: post(c, p).status_code, [tmp_path / "short.wav", tmp_path / "long.wav"]))
        sizes = app.state.batcher.batch_sizes
    assert answers == [200, 200] and sizes == [1, 1]


def test_concurrent_requests_are_decoded_together_each_getting_its_own_answer(tiny_model, real_clips, tmp_path):
    import soundfile

    paths = []
    for i, clip in enumerate(real_clips[:4]):
        soundfile.write(tmp_path / f"{i}.wav", clip, 16000)
        paths.append(tmp_path / f"{i}.wav")
    alone = [transcribe_batch(tiny_model, [clip], TranscribeOptions(steps=2, length=4))[0].text for clip in real_clips[:4]]
    app = create_app(tiny_model, ServerLimits(max_wait_seconds=1.0, max_batch=4))
    with TestClient(app) as c, concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: post(c, p).json()["text"], paths))
        sizes = app.state.batcher.batch_sizes
    assert answers == alone
    assert sizes == [4]  # one batch of all four


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_busy_port_is_reported_before_the_model_loads(monkeypatch, capsys):
    from dllm_asr import cli
    from dllm_asr.model import loading

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded although the port is taken")

    monkeypatch.setattr(loading, "load_model", load_model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"dllm-asr serve: error: --port {port}: cannot listen on 127.0.0.1:{port}"), error
    assert len(error.splitlines()) == 1


@pytest.mark.parametrize("flags, dtype", [([], "auto"), (["--dtype", "float32"], "float32")])
def test_serve_loads_the_model_in_the_dtype_asked_auto_by_default(monkeypatch, capsys, flags, dtype):
    from dllm_asr import cli
    from dllm_asr.model import loading

    asked = []

    def load_model(path, device, dtype):
        asked.append(dtype)
        raise ValueError("stop here")  # a load error: reported in one line, nothing served

    monkeypatch.setattr(loading, "load_model", load_model)
    assert cli.main(["serve", "--port", str(free_port()), *flags]) == 2
    assert asked == [dtype] and "stop here" in capsys.readouterr().err


def test_listen_on_binds_the_port_it_is_given():
    port = free_port()
    with listen_on("127.0.0.1", port) as listening:
        assert listening.getsockname() == ("127.0.0.1", port)


@pytest.fixture()
def live_server(tiny_model):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(tiny_model, ServerLimits(api_key="k")), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_official_openai_client(live_server, tiny_model, real_clips):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=live_server + "/v1", api_key="k", max_retries=0)
    expected = transcribe_batch(tiny_model, [real_clips[0]], TranscribeOptions(steps=2, length=4))[0].text
    extra = {"extra_body": FAST}
    with open(ASSETS / "example.wav", "rb") as f:
        assert client.audio.transcriptions.create(model="whisper-1", file=f, **extra).text == expected
    with open(ASSETS / "example.wav", "rb") as f:
        assert client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text", **extra).strip() == expected
    with open(ASSETS / "example.wav", "rb") as f:
        subtitles = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt", **extra)
    assert expected in subtitles and "-->" in subtitles
    with open(ASSETS / "example.wav", "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json", **extra)
    assert verbose.text == expected and verbose.segments[0].end > verbose.segments[0].start and verbose.duration > 3
    with pytest.raises(openai.AuthenticationError):
        with open(ASSETS / "example.wav", "rb") as f:
            openai.OpenAI(base_url=live_server + "/v1", api_key="wrong", max_retries=0).audio.transcriptions.create(
                model="whisper-1", file=f)
    with pytest.raises(openai.BadRequestError, match="cannot decode"):
        with open(DATA / "corrupt.wav", "rb") as f:
            client.audio.transcriptions.create(model="whisper-1", file=f)


def test_the_page_in_a_real_browser(live_server, tmp_path):
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")),
                               options=options)
    try:
        browser.get(live_server + "/")
        browser.find_element(By.ID, "file").send_keys(str(ASSETS / "example.wav"))
        browser.find_element(By.ID, "steps").send_keys("2")
        browser.find_element(By.ID, "key").send_keys("k")
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "transcript").text.strip())
        rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#trace .step")]
        status = browser.find_element(By.ID, "status").text
        browser.save_screenshot(str(tmp_path / "page.png"))  # the test's output, to look at
    finally:
        browser.quit()
    assert len(rows) == 2 and rows[0].startswith("step 1") and rows[1].startswith("step 2")
    assert "network passes (NFE)" in status
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_a_request_not_decoded_in_time_gets_504(tiny_model):
    with TestClient(create_app(tiny_model, ServerLimits(timeout_seconds=0.001, max_wait_seconds=0.5))) as c:
        answer = post(c)
    assert answer.status_code == 504 and "not decoded within" in answer.json()["error"]["message"]


def test_shutdown_finishes_the_requests_in_flight(tiny_model):
    import uvicorn

    openai = pytest.importorskip("openai")

    port = free_port()
    app = create_app(tiny_model, ServerLimits(max_wait_seconds=1.0))  # the request waits a second in the batcher
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        sent = pool.submit(client.audio.transcriptions.create, model="whisper-1",
                           file=("example.wav", (ASSETS / "example.wav").read_bytes()), extra_body=FAST)
        while not app.state.batcher.jobs.unfinished_tasks and not sent.done() and time.monotonic() < deadline:
            time.sleep(0.01)  # the request has reached the batcher
        server.should_exit = True  # what SIGINT / SIGTERM do
        answer = sent.result(timeout=60)
    thread.join(timeout=30)
    assert answer.text
    assert not thread.is_alive()


def test_openais_prompt_is_the_initial_prompt_of_the_ar_strategies_only(tiny_model):
    assert request_options(tiny_model, {"prompt": "Waldo.", "strategy": "ar"})[0].initial_prompt == "Waldo."
    assert request_options(tiny_model, {"prompt": "Waldo.", "strategy": "prior"})[0].initial_prompt == "Waldo."
    assert request_options(tiny_model, {"prompt": "Waldo.", "strategy": "threshold"})[0].initial_prompt is None
    assert request_options(tiny_model, {"prompt": "Waldo."})[0].initial_prompt is None  # the model's own: diffusion


def test_a_given_prior_is_deliberated(client, tiny_model, real_clips):
    from dllm_asr.transcription.strategies import deliberate_batch

    from dllm_asr.transcription.options import DeliberationOptions

    expected = deliberate_batch(tiny_model, [real_clips[0]], ["the quick brown fox"], DeliberationOptions(chunks=2),
                                TranscribeOptions(steps=2, length=4))[0]
    answer = post(client, data={"prior": "the quick brown fox", "mask": "semi-ar", "chunks": "2",
                                "response_format": "verbose_json"}).json()
    assert answer["text"] == expected.text and answer["dllm_asr"]["nfe"] == expected.nfe
    assert post(client, data={"prior": "x", "mask": "sideways"}).status_code == 400
