"""Where a text matches an image: similarity maps of a text over an image from a run's CLIP model.

``Explainer(model, processor).explain(image, text)`` returns a float32 heatmap with the image's
own height and width (higher = more similar), by one of four methods:

- ``patch``: every patch token of the last vision block goes through the post-layernorm and the
  visual projection, like the pooled token does, and its cosine with the text embedding is the
  map (a dense, training-free readout of the joint space).
- ``gradcam``: Grad-CAM of the image-text cosine on the last vision block's patch tokens
  (channel weights = the gradient averaged over patches; ReLU of the weighted sum).
- ``grad_x_input``: input gradient x input of the image-text cosine, summed over channels,
  positive part, smoothed over about half a patch.
- ``gradient``: the input gradient's magnitude (the saliency map of Simonyan et al., 2014: how much
  each pixel can move the image-text cosine), summed over channels and smoothed like ``grad_x_input``;
  unlike it, not weighted by the pixel's own value, so dark lung and bright bone count alike.

The token maps are a ``g x g`` grid (g = image size / patch size) upsampled bilinearly; every map is
then placed on the model's input window of the original image (resize + centre crop, as the
evaluation transform sees it), the rest of the image getting the map's minimum. Which method a
run uses is measured (pointing game on the validation split) by :mod:`.grounding` and kept in
``metrics/grounding.json``; :func:`selected_method` reads it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medxpert_utils.core.errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

METHODS = ("patch", "gradcam", "grad_x_input", "gradient")
NEUTRAL_TEXT = "No acute cardiopulmonary process."  # maps show text minus this normal impression (see Explainer)
DEFAULT_METHOD = "gradient"  # best on the demo validation split (README); a run's own grounding.json overrides it
_PIXEL_METHODS = ("grad_x_input", "gradient")  # maps at pixel resolution (no patch-grid shifting)
GROUNDING_FILE = "grounding.json"  # under the run's metrics/


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"unknown heatmap method '{method}' - use one of {', '.join(METHODS)}")
    return method


def check_text(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise UserError("empty text - name what to find, e.g. 'left pleural effusion'")
    return text.strip()


def selected_method(run: str | os.PathLike | None) -> str:
    """The method the run's grounding evaluation selected on its validation split, else :data:`DEFAULT_METHOD`."""
    from pathlib import Path

    from medxpert_utils.core import io

    if run is not None:
        path = Path(run) / "metrics" / GROUNDING_FILE
        if path.is_file():
            try:
                method = io.read_json(path).get("selection", {}).get("method")
            except (OSError, ValueError, AttributeError):
                method = None
            if method in METHODS:
                return method
    return DEFAULT_METHOD


class Explainer:
    """Similarity maps of texts over images with one CLIP model (any device; float32)."""

    def __init__(self, model: "CLIPModel", processor: "CLIPProcessor", max_length: int = 77, shifts: int = 2,
                 contrast: str | None = NEUTRAL_TEXT):
        from medxpert_utils.retrieval.encoders import image_transform

        self.model, self.processor, self.max_length, self.shifts = model, processor, max_length, int(shifts)
        self.contrast = contrast
        self._contrast_vectors: dict[str, np.ndarray] = {}  # the neutral text's embedding, made on first use
        self.transform = image_transform(processor)
        self.patch_size = int(model.config.vision_config.patch_size)

    @classmethod
    def from_run(cls, run: str | os.PathLike, model: str = "fine_tuned") -> "Explainer":
        """The run's zero-shot or fine-tuned CLIP (``clip.max_length`` tokens per text)."""
        from medxpert_utils.core import config, runtime
        from medxpert_utils.models import clip

        cfg = config.from_run(run)
        specs = clip.model_specs(cfg)
        if model not in specs:
            raise UserError(f"unknown model '{model}' - choose one of {', '.join(specs)}")
        from pathlib import Path

        spec = specs[model]
        if Path(spec).is_absolute() and not (Path(spec) / "config.json").is_file():
            from medxpert_utils.core import stages

            raise stages.missing(f"{model} CLIP not found at {spec}", "01", cfg.run_name)
        loaded, processor = clip.load_clip(spec, runtime.get_device(cfg.device))
        return cls(loaded, processor, max_length=cfg.clip.max_length)

    # --- pieces ------------------------------------------------------------------------------------------------

    def text_embeddings(self, texts: Sequence[str]) -> "torch.Tensor":
        """The texts' embeddings less the neutral one (:data:`NEUTRAL_TEXT`, embedded once per explainer)."""
        import torch

        texts = [check_text(t) for t in texts]
        out = self._embed(texts)
        if self.contrast:  # cos(x, t) - cos(x, neutral) = x . (t - neutral): what the text says beyond a normal film
            if self.contrast not in self._contrast_vectors:
                self._contrast_vectors[self.contrast] = self._embed([self.contrast])
            out = out - self._contrast_vectors[self.contrast]
        return torch.from_numpy(out).to(self._device)

    def _embed(self, texts: list[str]) -> np.ndarray:
        from medxpert_utils.retrieval.encoders import embed_texts

        return embed_texts(self.model, self.processor, texts, max_length=self.max_length, mixed_precision="no",
                           progress=False)

    @property
    def _device(self) -> "torch.device":
        return next(self.model.parameters()).device

    def pixel_values(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        """The model's input for grey images: (n, 3, H, W) float32 on the CPU (the search engine's transform)."""
        import torch

        return torch.stack([self.transform(img) for img in images])

    def _grid(self, pixel_values: "torch.Tensor") -> int:
        return pixel_values.shape[-1] // self.patch_size

    def _input_maps(self, pixel_values: "torch.Tensor", text: "torch.Tensor", method: str) -> "torch.Tensor":
        """(B, h, w) maps at the model's input size for image i and text i.

        Token maps (``patch``, ``gradcam``) are averaged over ``shifts`` x ``shifts`` copies of the input
        moved by fractions of a patch (edges replicated), each map moved back: a grid ``shifts`` times finer
        than the patch grid, whose maximum can fall between patch centres.
        """
        import torch.nn.functional as F

        if method in _PIXEL_METHODS or self.shifts <= 1:
            return self._single_maps(pixel_values, text, method)
        p = self.patch_size
        h, w = pixel_values.shape[-2:]
        padded = F.pad(pixel_values, (p, p, p, p), mode="replicate")
        total = None
        offsets = [round(i * p / self.shifts) for i in range(self.shifts)]
        for dy in offsets:
            for dx in offsets:
                moved = padded[..., p - dy:p - dy + h, p - dx:p - dx + w]  # content moved down/right by (dy, dx)
                m = self._single_maps(moved, text, method)[:, None]
                back = F.pad(m, (p, p, p, p), mode="replicate")[..., p + dy:p + dy + h, p + dx:p + dx + w]
                total = back if total is None else total + back
        return total[:, 0] / len(offsets) ** 2

    def _single_maps(self, pixel_values: "torch.Tensor", text: "torch.Tensor", method: str) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        vision = self.model.vision_model
        size = pixel_values.shape[-2:]
        if method == "patch":
            with torch.no_grad():
                hidden = vision(pixel_values=pixel_values).last_hidden_state[:, 1:, :]
                tokens = self.model.visual_projection(vision.post_layernorm(hidden))
                sims = (F.normalize(tokens.float(), dim=-1) * text[:, None, :]).sum(-1)
            g = self._grid(pixel_values)
            grid = sims.reshape(-1, 1, g, g)
            return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]
        if method == "gradcam":
            store: dict[str, torch.Tensor] = {}

            def keep(_module, _inputs, output):
                hidden = output[0] if isinstance(output, tuple) else output
                store["acts"] = hidden
                return output

            # the last block's input: its patch tokens reach the pooled token through the last attention
            # (the last block's own patch outputs never do, so their gradient is zero)
            layers = vision.encoder.layers
            source = layers[-2] if len(layers) >= 2 else getattr(vision, "pre_layrnorm", None) or vision.pre_layernorm
            handle = source.register_forward_hook(keep)
            try:
                with torch.enable_grad():
                    cos = self._cosine(pixel_values, text)
                    grads = torch.autograd.grad(cos.sum(), store["acts"])[0]
            finally:
                handle.remove()
            acts, grads = store["acts"][:, 1:, :].detach().float(), grads[:, 1:, :].float()
            weights = grads.mean(dim=1, keepdim=True)
            cam = torch.relu((acts * weights).sum(-1))
            g = self._grid(pixel_values)
            return F.interpolate(cam.reshape(-1, 1, g, g), size=size, mode="bilinear", align_corners=False)[:, 0]
        if method in _PIXEL_METHODS:
            x = pixel_values.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                cos = self._cosine(x, text)
                grads = torch.autograd.grad(cos.sum(), x)[0]
            if method == "gradient":
                attribution = grads.abs().sum(1, keepdim=True).float()
            else:
                attribution = torch.relu((grads * x.detach()).sum(1, keepdim=True)).float()
            sigma = max(self.patch_size / 4, 1.0)
            radius = int(3 * sigma)
            t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
            kernel = torch.exp(-(t / sigma) ** 2 / 2)
            kernel = kernel / kernel.sum()
            out = F.conv2d(attribution, kernel.view(1, 1, 1, -1), padding=(0, radius))
            out = F.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))
            return out[:, 0]
        raise UserError(f"unknown heatmap method '{method}' - use one of {', '.join(METHODS)}")

    def _cosine(self, pixel_values: "torch.Tensor", text: "torch.Tensor") -> "torch.Tensor":
        import torch.nn.functional as F

        from medxpert_utils.models.clip import image_features

        feats = image_features(self.model, pixel_values)
        return (F.normalize(feats.float(), dim=-1) * text).sum(-1)

    def _to_image(self, grid: np.ndarray, image: "Image.Image") -> np.ndarray:
        """A map over the model's input window, placed on the original image (its size, minimum outside)."""
        from PIL import Image as PILImage

        width, height = image.size
        t = self.transform
        if t.shortest_edge is not None:
            scale_x = scale_y = t.shortest_edge / min(width, height)
        else:
            scale_y, scale_x = t.size[0] / height, t.size[1] / width
        resized_w, resized_h = round(width * scale_x), round(height * scale_y)
        crop_h, crop_w = t.crop if t.crop is not None else (resized_h, resized_w)
        left, top = (resized_w - crop_w) // 2, (resized_h - crop_h) // 2
        x0, y0 = left / scale_x, top / scale_y
        x1, y1 = (left + crop_w) / scale_x, (top + crop_h) / scale_y
        cx0, cy0 = max(0, round(x0)), max(0, round(y0))
        cx1, cy1 = min(width, round(x1)), min(height, round(y1))
        full = np.full((height, width), float(grid.min()), dtype=np.float32)
        window = PILImage.fromarray(grid.astype(np.float32), mode="F").resize(
            (max(1, round(x1 - x0)), max(1, round(y1 - y0))), resample=PILImage.BILINEAR)
        arr = np.asarray(window, dtype=np.float32)
        full[cy0:cy1, cx0:cx1] = arr[cy0 - round(y0):cy1 - round(y0), cx0 - round(x0):cx1 - round(x0)]
        return full

    # --- public -----------------------------------------------------------------------------------------------

    def maps(self, images: Sequence[Any], texts: Sequence[str], method: str = DEFAULT_METHOD,
             batch_size: int = 32, pixel_values: "torch.Tensor | None" = None) -> list[np.ndarray]:
        """One map per (image, text) pair, each the size of its image (float32, higher = more similar).

        ``pixel_values``: the images' model input when the caller has it already (:meth:`pixel_values`; one row
        per image), so they are not transformed again.
        """
        from medxpert_utils.retrieval.search import to_image

        check_method(method)
        if len(images) != len(texts):
            raise UserError(f"{len(images)} images but {len(texts)} texts - pass one text per image")
        pil = [to_image(img) for img in images]
        if pixel_values is not None and len(pixel_values) != len(pil):
            raise ValueError(f"{len(pixel_values)} rows of pixel values for {len(pil)} images")
        text = self.text_embeddings(texts)
        out: list[np.ndarray] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(pil), batch_size):
                chunk = pil[start:start + batch_size]
                pixels = (self.pixel_values(chunk) if pixel_values is None
                          else pixel_values[start:start + batch_size])
                grids = self._input_maps(pixels.to(self._device), text[start:start + batch_size], method)
                grids_np = grids.detach().cpu().numpy()
                out.extend(self._to_image(grid, img) for grid, img in zip(grids_np, chunk))
        finally:
            self.model.train(was_training)
        return out

    def explain(self, image: Any, text: str, method: str = DEFAULT_METHOD,
                pixel_values: "torch.Tensor | None" = None) -> np.ndarray:
        """The similarity map of ``text`` over ``image`` (path, bytes, PIL or array), the image's size;
        ``pixel_values`` as in :meth:`maps`."""
        return self.maps([image], [text], method, pixel_values=pixel_values)[0]


def explain(run: str | os.PathLike, image: Any, text: str, model: str = "fine_tuned",
            method: str | None = None) -> np.ndarray:
    """``Explainer.from_run(run, model).explain(image, text, method)``; ``method`` defaults to the run's
    measured choice (:func:`selected_method`)."""
    return Explainer.from_run(run, model).explain(image, text, method or selected_method(run))


def normalise(heatmap: np.ndarray) -> np.ndarray:
    """The map scaled to [0, 1] (a constant map gives zeros)."""
    lo, hi = float(np.min(heatmap)), float(np.max(heatmap))
    return np.zeros_like(heatmap, dtype=np.float32) if hi <= lo else ((heatmap - lo) / (hi - lo)).astype(np.float32)
