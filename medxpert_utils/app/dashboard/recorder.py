"""The dashboard's record button: a small anywidget that records the microphone with the browser's MediaRecorder
and sends the recording (WebM/Opus in Chromium, Ogg/Opus in Firefox) to the kernel as a data URL.

It works wherever Jupyter widgets do (Voilà, JupyterLab): anywidget ships the front end in its wheel. The
browser asks for microphone permission on the first click; a refusal or a missing microphone comes back as
``error`` and the page shows it. A recording stops on the second click or after ``max_seconds``.
"""

from __future__ import annotations

import base64
import binascii
import re

import anywidget
import traitlets

from medxpert_utils.core.errors import AudioError

_ESM = r"""
function render({ model, el }) {
  const button = document.createElement("button");
  button.className = "jupyter-button widget-button mx-record";
  const idle = () => { button.textContent = "\u{1F3A4} Record question"; button.classList.remove("mx-recording"); };
  idle();
  let recorder = null, timer = null;
  const fail = (message) => { model.set("error", message); model.set("recording", false); model.save_changes(); };
  button.addEventListener("click", async () => {
    if (recorder && recorder.state === "recording") { recorder.stop(); return; }
    if (!navigator.mediaDevices || !window.MediaRecorder) { fail("this browser cannot record audio"); return; }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      fail(`no microphone: ${err.name || err}`); return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => { if (e.data && e.data.size) chunks.push(e.data); };
    recorder.onstop = () => {
      clearTimeout(timer);
      stream.getTracks().forEach((t) => t.stop());
      idle();
      const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
      const reader = new FileReader();
      reader.onload = () => {
        model.set("error", "");
        model.set("recording", false);
        model.set("data_url", reader.result);
        model.set("count", model.get("count") + 1);
        model.save_changes();
      };
      reader.readAsDataURL(blob);
    };
    recorder.start();
    button.textContent = "\u25A0 Stop recording";
    button.classList.add("mx-recording");
    model.set("recording", true); model.set("error", ""); model.save_changes();
    timer = setTimeout(() => { if (recorder.state === "recording") recorder.stop(); }, model.get("max_seconds") * 1000);
  });
  model.on("change:disabled", () => { button.disabled = model.get("disabled"); });
  button.disabled = model.get("disabled");
  el.appendChild(button);
}
export default { render };
"""

_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]*)(?:;[\w=.+-]+)*;base64,(?P<data>.*)$", re.S)


class Recorder(anywidget.AnyWidget):
    """Record button; ``count`` goes up with each finished recording, whose bytes :meth:`audio` returns."""

    _esm = _ESM
    data_url = traitlets.Unicode("").tag(sync=True)
    count = traitlets.Int(0).tag(sync=True)
    recording = traitlets.Bool(False).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)
    max_seconds = traitlets.Float(30.0).tag(sync=True)

    def audio(self) -> tuple[bytes, str]:
        """The last recording's bytes and a file name from its type (``recording.webm``)."""
        return decode_data_url(self.data_url)


def decode_data_url(url: str) -> tuple[bytes, str]:
    """Bytes and a file name of a ``data:audio/...;base64,...`` URL; AudioError when it is not one."""
    match = _DATA_URL.match(url or "")
    if match is None:
        raise AudioError("the recording did not arrive - record the question again")
    try:
        data = base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError):
        raise AudioError("the recording arrived damaged - record the question again") from None
    subtype = (match.group("mime").split("/")[-1] or "webm").split("+")[0]
    return data, f"recording.{subtype}"
