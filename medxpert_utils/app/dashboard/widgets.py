"""The dashboard's controls: small functions that each return one widget (wired in :mod:`.controller`)."""

from __future__ import annotations

import ipywidgets as widgets

from medxpert_utils.app.dashboard.render import CSS
from medxpert_utils.core.notices import DISCLAIMER
from medxpert_utils.viz.html import esc

ACCEPT = ".png,.jpg,.jpeg,.dcm,.dicom"
MODELS = (("fine-tuned", "fine_tuned"), ("zero-shot", "zero_shot"))


def header() -> widgets.HTML:
    """The page's styles and the not-for-clinical-use notice, first thing on the page."""
    return widgets.HTML(f'{CSS}<p class="mx-banner mx-disclaimer">{esc(DISCLAIMER)}</p>')


def random_banner(random_weights: dict[str, str]) -> str:
    """A warning for a run whose models have random weights (``random:<hub id>``, the rehearsal), else ""."""
    if not random_weights:
        return ""
    models = ", ".join(spec.split(":", 1)[1] for spec in random_weights.values())
    return (f'<p class="mx-banner mx-random-weights">Random weights: this run\'s models ({esc(models)}) were built '
            "from their published configurations with random weights, to rehearse the pipeline at full size. Its "
            "similar cases, captions and reports mean nothing.</p>")


def run_picker(options: list[tuple[str, str]], value: str | None) -> widgets.Dropdown:
    return widgets.Dropdown(options=options, value=value if value in {v for _, v in options} else None,
                            description="Run", layout=widgets.Layout(width="480px"))


def upload_button() -> widgets.FileUpload:
    return widgets.FileUpload(accept=ACCEPT, multiple=False, description="Upload X-ray",
                              tooltip="PNG, JPEG or DICOM chest X-ray")


AUDIO_ACCEPT = "audio/*,.wav,.flac,.ogg,.oga,.opus,.webm"


def audio_upload_button() -> widgets.FileUpload:
    return widgets.FileUpload(accept=AUDIO_ACCEPT, multiple=False, description="Upload audio", icon="file-audio-o",
                              tooltip="A spoken question: WAV, FLAC, OGG or WebM")


def query_box() -> widgets.Textarea:
    return widgets.Textarea(placeholder="Free-text query, or a question (ending in ?) about the query or the uploaded "
                                        "image, e.g. 'signs of pneumonia?'",
                            description="Query", layout=widgets.Layout(width="480px", height="60px"))


def k_slider(default: int) -> widgets.IntSlider:
    return widgets.IntSlider(value=default, min=1, max=50, description="Top K", continuous_update=False)


def model_toggle() -> widgets.ToggleButtons:
    return widgets.ToggleButtons(options=MODELS, value="fine_tuned", description="CLIP",
                                 style={"button_width": "90px", "description_width": "50px"})


def gemini_checkbox(available: bool) -> tuple[widgets.Checkbox, widgets.HTML]:
    box = widgets.Checkbox(value=available, disabled=not available, description="Use Gemini for the report",
                           indent=False)
    note = ("" if available
            else "No GEMINI_API_KEY / GOOGLE_API_KEY set: the offline retrieval reporter writes the report.")
    return box, widgets.HTML(f'<span class="mx-note">{esc(note)}</span>')


def action_button(label: str, style: str = "", icon: str = "") -> widgets.Button:
    return widgets.Button(description=label, button_style=style, icon=icon)


def status_line() -> tuple[widgets.IntProgress, widgets.HTML, widgets.HTML]:
    progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="200px", visibility="hidden"))
    return progress, widgets.HTML(), widgets.HTML()


def image_view() -> widgets.Image:
    return widgets.Image(format="png", layout=widgets.Layout(max_width="320px"))


def section(title: str, *children: widgets.Widget) -> widgets.VBox:
    return widgets.VBox([widgets.HTML(f"<h3 style='margin:6px 0 2px'>{esc(title)}</h3>"), *children])


def ask_box() -> widgets.HBox:
    """Where a side or level word is confirmed before searching (a prompt, then a button per choice); hidden until
    the recogniser is unsure of one."""
    box = widgets.HBox(layout=widgets.Layout(display="none", align_items="center", flex_flow="row wrap"))
    box.add_class("mx-ask")
    return box


def ask_prompt(text: str) -> widgets.HTML:
    prompt = widgets.HTML(f'<span class="mx-ask-prompt">{esc(text)}</span>')
    prompt.add_class("mx-ask-question")
    return prompt


def ask_choice(choice: str) -> widgets.Button:
    """One answer to a question: the word, or "none" for no word."""
    button = widgets.Button(description=choice or "none", tooltip=f"search with '{choice}'" if choice else
                            "search without a word here", layout=widgets.Layout(width="auto"))
    button.add_class("mx-ask-choice")
    return button
