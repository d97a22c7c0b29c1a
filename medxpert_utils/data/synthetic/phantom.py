"""Phantom PA chest radiographs drawn with vectorised NumPy (the pictures behind the ``demo`` data).

Laterality: a PA radiograph is viewed as if facing the patient, so the patient's LEFT is on the
image's RIGHT. Findings name the patient's side ("left pleural effusion"); :func:`side_sign` maps
it to the image (patient left -> +x, image right). So the heart bulges to the image right, the
gastric bubble sits under the image-right dome and a left-sided pacemaker in the image-right upper
chest, as on a real PA film.

Geometry lives in normalised coordinates: x and y run from -1 to 1 across the image, y downward.
Each pixel is mapped back into body coordinates (undoing the study's rotation, shift and
magnification), so the whole patient moves together. The picture is built as an attenuation map
(soft tissue ~1, aerated lung ~0.3, bone and devices on top) and then exposed:
``I = (1 - exp(-k A)) ** gamma`` plus detector noise, quantised to 8 bits.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

SIDES = ("left", "right", "bilateral")
ZONES = ("upper", "middle", "lower")

AIR = 0.72  # attenuation removed by aerated lung; an opacity puts back a fraction of it
CM = 0.053  # normalised units per centimetre (a ~30 cm thorax spans ~1.6 units)


def side_sign(side: str) -> int:
    """Image x direction of a patient side: patient left -> +1 (image right), patient right -> -1."""
    if side == "left":
        return 1
    if side == "right":
        return -1
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")


def sides_of(side: str | None) -> tuple[int, ...]:
    """Image signs covered by a finding's side ("bilateral" -> both)."""
    if side == "bilateral":
        return (-1, 1)
    return (side_sign(side or "right"),)


@dataclass(frozen=True)
class Anatomy:
    """One patient's body: persists across that patient's studies."""

    thorax: float = 0.78  # half-width of the lung fields at the bases
    apex_y: float = -0.64  # top of the lung apices
    dome_y: float = 0.42  # top of the right hemidiaphragm (the left sits a little lower)
    ctr: float = 0.42  # cardiothoracic ratio of the normal heart
    heart_y: float = 0.25  # vertical centre of the heart
    mediastinum: float = 0.11  # half-width of the upper mediastinum
    rib_spacing: float = 0.125
    body_margin: float = 0.13  # soft tissue beyond the rib cage (habitus)
    vessel_seed: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Anatomy":
        return cls(
            thorax=float(rng.uniform(0.70, 0.84)),
            apex_y=float(rng.uniform(-0.70, -0.60)),
            dome_y=float(rng.uniform(0.36, 0.46)),
            ctr=float(rng.uniform(0.38, 0.45)),
            heart_y=float(rng.uniform(0.22, 0.28)),
            mediastinum=float(rng.uniform(0.095, 0.125)),
            rib_spacing=float(rng.uniform(0.115, 0.132)),
            body_margin=float(rng.uniform(0.07, 0.19)),
            vessel_seed=int(rng.integers(0, 2**31 - 1)),
        )


@dataclass(frozen=True)
class Nuisance:
    """Acquisition variation of one image: positioning, inspiration, exposure, noise."""

    rotation_deg: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0  # magnification
    inspiration: float = 0.0  # + lowers the domes (deeper breath)
    exposure: float = 1.0  # gain of the attenuation -> brightness curve
    contrast: float = 1.0  # multiplies the display gamma
    noise: float = 0.0  # sigma of additive detector noise (0..1 intensity)
    noise_seed: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Nuisance":
        return cls(
            rotation_deg=float(rng.uniform(-4, 4)),
            shift_x=float(rng.uniform(-0.04, 0.04)),
            shift_y=float(rng.uniform(-0.04, 0.04)),
            scale=float(rng.uniform(0.95, 1.04)),
            inspiration=float(rng.uniform(-0.04, 0.04)),
            exposure=float(rng.uniform(0.85, 1.2)),
            contrast=float(rng.uniform(0.85, 1.2)),
            noise=float(rng.uniform(0.008, 0.03)),
            noise_seed=int(rng.integers(0, 2**31 - 1)),
        )


@dataclass(frozen=True)
class Finding:
    """One visible finding: what it is, where (patient side, lung zone), how big, how certain.

    ``kind`` is one of :data:`FINDING_KINDS`; ``detail`` is kind-specific (device type, lesion
    type, rib number); ``variant`` seeds the finding's own shape (nodule position, patchiness) so
    the same finding looks the same in every image of a study. Uncertain findings are drawn faintly.
    """

    kind: str
    side: str | None = None
    zone: str | None = None
    severity: str | None = None
    certainty: str = "positive"
    detail: str | None = None
    size_cm: float | None = None
    variant: int = 0

    @property
    def faint(self) -> float:
        return 0.55 if self.certainty == "uncertain" else 1.0


FINDING_KINDS = (
    "cardiomegaly", "widened_mediastinum", "effusion", "pneumothorax", "consolidation", "pneumonia",
    "opacity", "atelectasis", "edema", "lesion", "fracture", "device", "pleural_thickening",
)
DEVICES = ("et_tube", "ng_tube", "central_line", "picc", "pacemaker", "chest_tube")
HEART_TILT = 0.45  # radians; the cardiac long axis runs down towards the image right
HEART_ASPECT = 0.72  # short / long semi-axis of the cardiac ellipse
FRACTURE_U = 0.42  # fractures sit at this fraction of the way from the spine to the lateral wall
CTR_BY_SEVERITY = {"mild": 0.53, "moderate": 0.58, "severe": 0.64}


# ----------------------------------------------------------------------------------------------
# small vectorised drawing helpers


def _soft(d: np.ndarray, eps: float) -> np.ndarray:
    """1 where the signed distance ``d`` is negative (inside), 0 outside, a linear ramp ~2 ``eps`` wide between."""
    out = d * np.float32(-0.5 / eps)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _smoothstep(a: float, b: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _polyline_distance(x: np.ndarray, y: np.ndarray, points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Distance from every pixel to a polyline (the main bronchi)."""
    best = np.full(x.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        np.minimum(best, np.hypot(x - x0 - t * dx, y - y0 - t * dy), out=best)
    return best


def _smooth_curve(points: Sequence[tuple[float, float]], n: int = 24) -> list[tuple[float, float]]:
    """Catmull-Rom resampling so tubes and leads bend smoothly through their control points."""
    p = np.asarray(points, dtype=np.float64)
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    for i in range(1, len(p) - 2):
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        a, b, c, d = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.extend(0.5 * ((2 * b) + (-a + c) * t + (2 * a - 5 * b + 4 * c - d) * t**2
                          + (-a + 3 * b - 3 * c + d) * t**3))
    out.append(p[-2])
    return [(float(u), float(v)) for u, v in out]


def _field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, cells: int = 7) -> np.ndarray:
    """Smooth random field in [0, 1] in body coordinates (patchy opacities, lumpy edges).

    A sum of eight random plane waves whose wavelength is about the body width / ``cells``,
    squashed to [0, 1]; cheap, and identical however the image is rotated or sized.
    """
    k = 8
    freq = np.pi * cells / 2.5 * rng.uniform(0.7, 1.3, k)
    angle = rng.uniform(0, np.pi, k)
    phase = rng.uniform(0, 2 * np.pi, k)
    total = np.zeros_like(x)
    for f, a, p in zip(freq, angle, phase):
        total += np.cos(x * np.float32(f * np.cos(a)) + y * np.float32(f * np.sin(a)) + np.float32(p))
    return 0.5 + 0.5 * np.tanh(total * np.float32(0.9 / np.sqrt(k / 2)))


# ----------------------------------------------------------------------------------------------
# the thorax


@dataclass
class _Thorax:
    """Per-image geometry shared by the anatomy and the findings layers."""

    x: np.ndarray
    y: np.ndarray
    px: float  # one pixel in body units
    anatomy: Anatomy
    nuisance: Nuisance
    widened: float = 0.0
    ctr: float = 0.42
    inspiration: float = 0.0
    lung: dict[int, np.ndarray] = field(default_factory=dict)  # image sign -> soft mask
    d_lat: dict[int, np.ndarray] = field(default_factory=dict)  # signed distance to lateral/apical wall
    heart: np.ndarray | None = None

    @property
    def eps(self) -> float:
        return 0.6 * self.px

    def width(self, sigma: float) -> float:
        """A line width never thinner than about a pixel, so thin structures survive at 64 px."""
        if np.ndim(sigma) == 0:
            return float(max(sigma, 0.75 * self.px))  # a Python float keeps float32 arrays float32
        return np.maximum(sigma, np.float32(0.75 * self.px))

    def lat(self, y: np.ndarray | float) -> np.ndarray:
        a = self.anatomy
        t = np.clip((y - a.apex_y) / (self.cp_y(1) - a.apex_y), 0.0, 1.0)
        return a.thorax * (0.6 + 0.4 * np.sqrt(t))

    def dome_top(self, s: int) -> float:
        return self.anatomy.dome_y + (0.035 if s > 0 else 0.0) + self.inspiration

    def cp_y(self, s: int) -> float:
        """Height of the costophrenic angle (where the dome meets the lateral wall)."""
        return self.dome_top(s) + 0.9 * (0.58 * self.anatomy.thorax) ** 2

    def dome(self, s: int, xm: np.ndarray) -> np.ndarray:
        c = 0.42 * self.anatomy.thorax
        k = np.where(xm > c, np.float32(0.9), np.float32(0.35))
        return self.dome_top(s) + k * (xm - c) ** 2

    def med(self, s: int, y: np.ndarray) -> np.ndarray:
        a = self.anatomy
        m = a.mediastinum + 0.012 * np.clip(y - a.apex_y, 0, None)
        if s > 0:  # aortic knob on the patient's left
            m = m + 0.05 * np.exp(-(((y - (a.apex_y + 0.36)) / 0.075) ** 2))
        if self.widened:
            below_apex = _smoothstep(a.apex_y - 0.05, a.apex_y + 0.15, y)
            upper = below_apex * (1 - _smoothstep(a.heart_y - 0.25, a.heart_y - 0.05, y))
            m = m + self.widened * upper
        return m

    def heart_geometry(self) -> tuple[float, float, float, float]:
        """Centre x, long and short semi-axes and centre y of the cardiac silhouette.

        An ellipse tilted by :data:`HEART_TILT` (apex down towards the image right) whose
        horizontal extent is ``ctr`` times the thoracic width; 30 % of it lies right of midline.
        """
        a = self.anatomy
        total = self.ctr * 2 * a.thorax
        c, s = float(np.cos(HEART_TILT)), float(np.sin(HEART_TILT))
        long_axis = total / 2 / np.sqrt(c * c + (HEART_ASPECT * s) ** 2)
        return 0.2 * total, float(long_axis), float(long_axis * HEART_ASPECT), a.heart_y

    def zone(self, s: int, zone: str) -> np.ndarray:
        """Soft mask of a lung zone (upper / middle / lower third of the lung's height)."""
        a = self.anatomy
        top, bottom = a.apex_y, self.cp_y(s)
        h = bottom - top
        cuts = {"upper": (top - 1, top + 0.38 * h), "middle": (top + 0.36 * h, top + 0.68 * h),
                "lower": (top + 0.62 * h, bottom + 1)}[zone]
        e = 0.04
        return _soft(cuts[0] - self.y, e) * _soft(self.y - cuts[1], e)

    def zone_centre(self, s: int, zone: str) -> tuple[float, float]:
        a = self.anatomy
        h = self.cp_y(s) - a.apex_y
        frac = {"upper": 0.22, "middle": 0.52, "lower": 0.78}[zone]
        yc = a.apex_y + frac * h
        return s * 0.52 * a.thorax, yc


def _build_thorax(anatomy: Anatomy, nuisance: Nuisance, size: int, findings: Iterable[Finding]) -> _Thorax:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    gx, gy = np.meshgrid(c, c)
    gx = (gx - nuisance.shift_x) / nuisance.scale
    gy = (gy - nuisance.shift_y) / nuisance.scale
    th = np.deg2rad(nuisance.rotation_deg)
    x = (np.cos(th) * gx + np.sin(th) * gy).astype(np.float32)
    y = (-np.sin(th) * gx + np.cos(th) * gy).astype(np.float32)
    t = _Thorax(x=x, y=y, px=2.0 / size / nuisance.scale, anatomy=anatomy, nuisance=nuisance, ctr=anatomy.ctr,
                inspiration=nuisance.inspiration)
    for f in findings:
        if f.kind == "cardiomegaly":
            t.ctr = max(t.ctr, CTR_BY_SEVERITY.get(f.severity or "moderate", 0.58))
        elif f.kind == "widened_mediastinum":
            t.widened = 0.085 * f.faint

    hx, ha, hb, hy = t.heart_geometry()
    c, s = float(np.cos(HEART_TILT)), float(np.sin(HEART_TILT))
    u = (c * (x - hx) + s * (y - hy)) / ha
    v = (-s * (x - hx) + c * (y - hy)) / hb
    t.heart = _soft((np.sqrt(u**2 + v**2) - 1) * hb, t.eps)

    for s in (-1, 1):
        xm = s * x
        lat = t.lat(y)
        apex = (anatomy.apex_y + 2.2 * (xm - 0.42 * anatomy.thorax) ** 2) - y
        d_lat = np.maximum(xm - lat, apex)
        d = np.maximum.reduce([d_lat, t.med(s, y) - xm, y - t.dome(s, xm)])
        t.lung[s] = _soft(d, t.eps) * (1 - t.heart)
        t.d_lat[s] = d_lat
    return t


def _anatomy_layer(t: _Thorax) -> np.ndarray:
    """Body, lungs, mediastinum, heart, trachea, bones: the attenuation of a normal chest."""
    a, x, y = t.anatomy, t.x, t.y
    neck = 0.22
    bw = neck + (a.thorax + a.body_margin + 0.06 - neck) * _smoothstep(-1.0, a.apex_y - 0.08, y)
    bw = bw + 0.04 * _smoothstep(0.3, 1.0, y)  # flanks
    body = _soft(np.abs(x) - bw, 2 * t.eps)
    thickness = 0.15 + 0.85 * np.clip(1 - (x / bw) ** 2, 0, 1) ** 0.6
    atten = body * thickness
    atten = atten + 0.12 * t.heart

    lungs = t.lung[-1] + t.lung[1]
    atten = atten - AIR * lungs
    # gastric bubble under the left (image-right) dome
    gb = ((x - 0.42 * a.thorax) / 0.13) ** 2 + ((y - (t.dome_top(1) + 0.1)) / 0.06) ** 2
    atten = atten - 0.3 * _soft(gb - 1, 0.25)
    # trachea and main bronchi
    carina = a.apex_y + 0.42
    trach = _soft(np.abs(x - 0.004) - 0.032, t.eps) * _soft(y - carina, 0.02)
    bronchi = sum(_soft(_polyline_distance(x, y, [(0.0, carina), (s * 0.15, carina + 0.14)]) - 0.022, t.eps)
                  for s in (-1, 1))
    atten = atten - 0.22 * np.clip(trach + bronchi, 0, 1) * body
    # hila: vessels clustered beside the mediastinum
    for s in (-1, 1):
        atten = atten + 0.16 * np.exp(-(((x - s * 0.2 * a.thorax) / 0.07) ** 2 + ((y - (carina + 0.12)) / 0.11) ** 2))
    # spine with vertebral bodies and disc spaces
    vert = 0.8 + 0.2 * np.cos(2 * np.pi * (y - a.apex_y) / (a.rib_spacing * 1.02)) ** 2
    atten = atten + 0.22 * _soft(np.abs(x) - 0.075, t.eps) * vert * body * (1 - 0.6 * t.heart)
    # clavicles
    for s in (-1, 1):
        xm = s * x
        u = np.clip((xm - 0.06) / 0.6, 0, 1)
        cy = a.apex_y + 0.12 - 0.3 * u + 0.1 * u**2 + 0.03 * np.sin(2 * np.pi * u)
        span = (1 - _soft(xm - 0.06, t.eps)) * _soft(xm - 0.68, 0.02)
        atten = atten + 0.34 * np.exp(-(((y - cy) / t.width(0.03)) ** 2)) * span
    return atten


def _ribs(t: _Thorax, fracture: Finding | None) -> np.ndarray:
    """Posterior ribs: ten curved bands per side from the spine out past the lateral lung wall."""
    a, x, y = t.anatomy, t.x, t.y
    out = np.zeros_like(x)
    first = a.apex_y - 0.02
    for s in (-1, 1):
        xm = s * x
        u = np.clip((xm - 0.07) / a.thorax, 0, None)
        d = y - (-0.1 * u + 0.5 * u**2)  # height of the rib family at the spine
        k = (d - first) / a.rib_spacing
        idx = np.round(k)
        if fracture is not None and s in sides_of(fracture.side):
            rib = (int(fracture.detail or 6) - 1) if (fracture.detail or "").isdigit() else 5
            here = (idx == rib) & (u > FRACTURE_U)
            d = np.where(here, d - 0.5 * a.rib_spacing, d)  # lateral fragment displaced half a rib space
            k = (d - first) / a.rib_spacing
            idx = np.round(k)
        frac = (k - idx) * a.rib_spacing
        band = np.exp(-((frac / t.width(0.02)) ** 2))
        valid = (idx >= 0) & (idx <= 9)
        extent = _soft(xm - (t.lat(y) + 0.07), 0.02) * (1 - _soft(xm - 0.07, t.eps))
        rib_layer = band * valid * extent
        if fracture is not None and s in sides_of(fracture.side):
            gap = np.exp(-(((u - FRACTURE_U) * a.thorax / t.width(0.04)) ** 2))
            rib_layer = rib_layer * (1 - gap * (idx == rib))
        out += rib_layer
    return 0.2 * out * (1 - 0.6 * t.heart)


@functools.lru_cache(maxsize=32)
def _vessel_tree(anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (body x, y) and weights along the branching pulmonary vessels of one patient.

    Each lung gets a fan of trunks from its hilum that fork three times, thinning and wiggling as
    they go; points are spaced :data:`_VESSEL_STEP` apart so they can be splatted at any size.
    All branches of one generation are grown together (arrays, not a Python loop per branch).
    """
    rng = np.random.default_rng(anatomy.vessel_seed)
    carina = anatomy.apex_y + 0.42
    xs, ys, ws = [], [], []
    for s in (-1, 1):
        n0 = 9
        x0 = np.full(n0, s * 0.19 * anatomy.thorax)
        y0 = np.full(n0, carina + 0.1)
        th = np.linspace(-2.2, 1.45, n0) + rng.uniform(-0.12, 0.12, n0)  # 0: lateral, -pi/2: up
        length = rng.uniform(0.2, 0.3, n0)
        w = np.ones(n0)
        for _ in range(4):
            n = int(np.ceil(length.max() / _VESSEL_STEP))
            heading = th[:, None] + np.cumsum(rng.normal(0, 0.035, (len(th), n)), axis=1)
            px = x0[:, None] + np.cumsum(s * np.cos(heading) * _VESSEL_STEP, axis=1)
            py = y0[:, None] + np.cumsum(np.sin(heading) * _VESSEL_STEP, axis=1)
            steps = np.maximum(2, (length / _VESSEL_STEP).astype(int))
            keep = np.arange(n)[None, :] < steps[:, None]
            xs.append(px[keep])
            ys.append(py[keep])
            ws.append(np.broadcast_to(w[:, None], keep.shape)[keep])
            last = steps - 1
            rows = np.arange(len(th))
            ex, ey, eh = px[rows, last], py[rows, last], heading[rows, last]
            turn = rng.uniform(0.2, 0.55, (len(th), 2)) * np.array([-1.0, 1.0])
            x0, y0 = np.repeat(ex, 2), np.repeat(ey, 2)
            th = (eh[:, None] + turn).ravel()
            length = np.repeat(length, 2) * rng.uniform(0.6, 0.8, 2 * len(length))
            w = np.repeat(w, 2) * 0.72
    return (np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32),
            np.concatenate(ws).astype(np.float32))


_VESSEL_STEP = 0.004


def _splat(t: _Thorax, bx: np.ndarray, by: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Accumulate weighted body-coordinate points into this image's pixel grid (bilinear)."""
    nz = t.nuisance
    th = np.deg2rad(nz.rotation_deg)
    gx = np.cos(th) * bx - np.sin(th) * by
    gy = np.sin(th) * bx + np.cos(th) * by
    size = t.x.shape[0]
    col = ((gx * nz.scale + nz.shift_x) + 1) / 2 * size - 0.5
    row = ((gy * nz.scale + nz.shift_y) + 1) / 2 * size - 0.5
    c0, r0 = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    fc, fr = col - c0, row - r0
    hist = np.zeros(size * size, dtype=np.float64)
    for dr, dc, share in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        hist += np.bincount(rr[ok] * size + cc[ok], weights=(weight * share)[ok], minlength=size * size)
    return hist.reshape(size, size).astype(np.float32)


def _markings(t: _Thorax, blur: float) -> np.ndarray:
    """Lung markings: the patient's vessel tree splatted at this image's position, then blurred."""
    bx, by, w = _vessel_tree(t.anatomy)
    hist = _splat(t, bx, by, w * np.float32(_VESSEL_STEP / t.px))  # same brightness at every size
    sigma = 0.6 + 0.9 * blur
    return ndimage.gaussian_filter(hist, sigma) * np.float32(0.6 / sigma)


def _curve(t: _Thorax, points: Sequence[tuple[float, float]], sigma: float, amp: float,
           smooth: bool = True) -> np.ndarray:
    """A thin bright line through ``points`` (body units): ``amp * exp(-(d / sigma)^2)`` across it.

    Drawn by splatting densely spaced points and blurring, which costs the same for any length.
    """
    pts = np.asarray(_smooth_curve(points) if smooth else points, dtype=np.float64)
    seg = np.diff(pts, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    step = t.px / 4
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    along = np.arange(0.0, cum[-1], step)
    bx = np.interp(along, cum, pts[:, 0])
    by = np.interp(along, cum, pts[:, 1])
    hist = _splat(t, bx, by, np.full(len(bx), step / t.px))
    sigma_px = float(t.width(sigma)) / np.sqrt(2) / t.px
    return ndimage.gaussian_filter(hist, sigma_px) * np.float32(amp * np.sqrt(2 * np.pi) * sigma_px)


# ----------------------------------------------------------------------------------------------
# findings


def _effusion(t: _Thorax, f: Finding, s: int) -> np.ndarray:
    a = t.anatomy
    frac = {"small": 0.15, "moderate": 0.34, "large": 0.58}.get(f.severity or "small", 0.15)
    if f.certainty == "uncertain":
        frac = 0.1
    top, cp = a.apex_y, t.cp_y(s)
    level = cp - frac * (cp - top)
    xm = s * t.x
    m = t.med(s, t.y)
    u = np.clip((xm - m) / (a.thorax - m), 0, 1.2)
    surface = level + 0.05 - 0.16 * u**2  # meniscus: climbs the lateral wall
    below = _soft(surface - t.y, 0.025)
    depth = 0.8 + 0.2 * np.clip((t.y - surface) / 0.2, 0, 1)
    return AIR * 0.95 * f.faint * below * depth * t.lung[s]


def _pneumothorax(t: _Thorax, f: Finding, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (attenuation change, mask of the airless rim without lung markings)."""
    a = t.anatomy
    gap = {"small": 0.06, "moderate": 0.12, "large": 0.22}.get(f.severity or "small", 0.06)
    if f.certainty == "uncertain":
        gap = 0.045
    if (f.severity or "small") == "small":  # apical
        mid = a.apex_y + 0.5 * (t.cp_y(s) - a.apex_y)
        gap = gap * _soft(t.y - mid, 0.08)
    d = t.d_lat[s]
    rim = _soft(-(d + gap), t.eps) * t.lung[s]
    line = np.exp(-(((d + gap) / t.width(0.01)) ** 2)) * t.lung[s] * (gap > 0.01)
    return 0.3 * f.faint * line - 0.1 * rim, rim


def _airspace(t: _Thorax, f: Finding, s: int, rng: np.random.Generator) -> np.ndarray:
    zone = f.zone or "lower"
    density = {"consolidation": 0.8, "pneumonia": 0.7, "opacity": 0.5}[f.kind]
    patch = _field(rng, t.x, t.y, cells=9 if f.kind == "consolidation" else 13)
    cover = {"consolidation": 0.15, "pneumonia": 0.4, "opacity": 0.45}[f.kind]
    patchy = _smoothstep(cover - 0.12, cover + 0.12, patch)
    # the opacity is centred in its zone and fades towards the zone's edge
    cx, cy = t.zone_centre(s, zone)
    r = np.hypot((t.x - cx) / (0.5 * t.anatomy.thorax), (t.y - cy) / 0.3)
    core = _soft(r - 1, 0.25)
    return AIR * density * f.faint * patchy * core * t.zone(s, zone) * t.lung[s]


def _atelectasis(t: _Thorax, f: Finding, s: int, rng: np.random.Generator) -> np.ndarray:
    a = t.anatomy
    out = np.zeros_like(t.x)
    base = t.dome_top(s)
    n = 2 if (f.severity == "mild" or f.certainty == "uncertain") else 3
    for i in range(n):
        y0 = base - 0.05 - 0.075 * i - rng.uniform(0, 0.02)
        start = 0.5 if s > 0 else 0.2  # the left base is half hidden behind the heart
        x0, x1 = (start + rng.uniform(0, 0.08)) * a.thorax, (0.9 - rng.uniform(0, 0.08)) * a.thorax
        tilt = rng.uniform(-0.05, 0.05)
        out = np.maximum(out, _curve(t, [(s * x0, y0 + tilt), (s * x1, y0 - tilt)], 0.02, 1.0, smooth=False))
    return AIR * 0.85 * f.faint * out * t.lung[s]


def _edema(t: _Thorax, f: Finding) -> np.ndarray:
    a = t.anatomy
    amp = {"mild": 0.32, "moderate": 0.48, "severe": 0.65}.get(f.severity or "moderate", 0.48)
    if f.certainty == "uncertain":
        amp = 0.22
    carina = a.apex_y + 0.42
    haze = np.exp(-(((np.abs(t.x) - 0.18 * a.thorax) / (0.42 * a.thorax)) ** 2 + ((t.y - (carina + 0.15)) / 0.36) ** 2))
    return AIR * amp * haze * (t.lung[-1] + t.lung[1])


def _lesion(t: _Thorax, f: Finding, rng: np.random.Generator) -> np.ndarray:
    a = t.anatomy
    out = np.zeros_like(t.x)
    if f.detail == "multiple":
        spots = [(side, zone) for side in (-1, 1) for zone in ZONES]
        picks = rng.choice(len(spots), size=int(rng.integers(3, 6)), replace=False)
        targets = [(spots[i], (f.size_cm or 1.5) * CM / 2) for i in picks]
    else:
        targets = [((side_sign(f.side or "right"), f.zone or "upper"), (f.size_cm or 2.0) * CM / 2)]
    for (s, zone), radius in targets:
        cx, cy = t.zone_centre(s, zone)
        cx += s * rng.uniform(-0.1, 0.08) * a.thorax
        cy += rng.uniform(-0.05, 0.05)
        dx, dy = t.x - cx, t.y - cy
        lobes = 1 + 0.1 * np.sin(3 * np.arctan2(dy, dx) + rng.uniform(0, 6.3))
        r = np.hypot(dx, dy) / (radius * lobes)
        out += _soft((r - 1) * radius, t.eps)
    return AIR * 0.9 * f.faint * np.clip(out, 0, 1)


def _pleural_thickening(t: _Thorax, f: Finding, s: int, rng: np.random.Generator) -> np.ndarray:
    a = t.anatomy
    lumps = 0.055 + 0.06 * _field(rng, t.x, t.y, cells=11)
    span = _smoothstep(a.apex_y + 0.25, a.apex_y + 0.4, t.y) * (1 - _smoothstep(t.cp_y(s) - 0.2, t.cp_y(s) - 0.05, t.y))
    band = _soft(-(t.d_lat[s] + lumps), t.eps) * t.lung[s]
    return AIR * f.faint * band * span


def _device(t: _Thorax, f: Finding) -> np.ndarray:
    a = t.anatomy
    carina = a.apex_y + 0.42
    W = a.thorax

    def line(points, sigma: float, amp: float) -> np.ndarray:
        return _curve(t, points, sigma, amp)

    kind = f.detail
    if kind == "et_tube":
        return line([(0.0, -1.3), (0.0, a.apex_y), (0.004, carina - 0.1)], 0.012, 0.75)
    if kind == "ng_tube":
        d = t.dome_top(1)
        return line([(0.02, -1.3), (0.035, a.apex_y), (0.06, a.heart_y), (0.12, d + 0.06), (0.32, d + 0.14),
                     (0.45 * W, d + 0.1)], 0.01, 0.7)
    if kind == "central_line":  # right internal jugular into the SVC (image left)
        return line([(-0.34, -1.3), (-0.2, a.apex_y - 0.05), (-0.08, a.apex_y + 0.25), (-0.05, carina + 0.12)],
                    0.009, 0.65)
    if kind == "picc":  # left arm into the SVC
        return line([(1.1, a.apex_y + 0.05), (0.7, a.apex_y - 0.01), (0.3, a.apex_y + 0.1), (0.06, carina - 0.02),
                     (-0.04, carina + 0.14)], 0.008, 0.65)
    if kind == "chest_tube":
        s = side_sign(f.side or "right")
        return line([(s * (W + 0.25), t.dome_top(s) + 0.1), (s * 0.8 * W, t.dome_top(s) - 0.05),
                     (s * 0.62 * W, a.apex_y + 0.5),
                     (s * 0.45 * W, a.apex_y + 0.12)], 0.016, 0.8)
    if kind == "pacemaker":  # generator in the left (image-right) upper chest, leads into RA and RV
        gx, gy = 0.55 * W, a.apex_y - 0.02
        box = np.maximum(np.abs(t.x - gx) - 0.075, np.abs(t.y - gy) - 0.05)
        gen = 2.2 * _soft(box, t.eps)
        hx, ha, hb, hy = t.heart_geometry()
        ra = line([(gx - 0.06, gy + 0.02), (0.25, a.apex_y + 0.15), (0.0, carina + 0.05), (-0.04, hy - 0.05)],
                  0.008, 0.8)
        rv = line([(gx - 0.06, gy + 0.04), (0.22, a.apex_y + 0.2), (0.0, carina + 0.1), (hx + 0.5 * ha, hy + 0.4 * hb)],
                  0.008, 0.8)
        return gen + np.maximum(ra, rv)
    raise ValueError(f"unknown device {kind!r}: use one of {DEVICES}")


# ----------------------------------------------------------------------------------------------


def render(findings: Sequence[Finding] = (), anatomy: Anatomy | None = None, nuisance: Nuisance | None = None,
           size: int = 128) -> np.ndarray:
    """Draw one PA phantom showing ``findings``; returns a ``size`` x ``size`` uint8 array.

    Deterministic: the same arguments give the same pixels (shapes are seeded by
    ``anatomy.vessel_seed``, each finding's ``variant`` and ``nuisance.noise_seed``).
    """
    anatomy = anatomy or Anatomy()
    nuisance = nuisance or Nuisance()
    for f in findings:
        if f.kind not in FINDING_KINDS:
            raise ValueError(f"unknown finding kind {f.kind!r}: use one of {FINDING_KINDS}")
    t = _build_thorax(anatomy, nuisance, size, findings)
    atten = _anatomy_layer(t)
    fracture = next((f for f in findings if f.kind == "fracture"), None)
    atten += _ribs(t, fracture)

    has_edema = any(f.kind == "edema" for f in findings)
    markings = _markings(t, blur=1.0 if has_edema else 0.0)
    airless = {-1: np.zeros_like(t.x), 1: np.zeros_like(t.x)}
    extra = np.zeros_like(t.x)
    for f in findings:
        rng = np.random.default_rng([anatomy.vessel_seed, f.variant, FINDING_KINDS.index(f.kind)])
        if f.kind in ("cardiomegaly", "widened_mediastinum", "fracture"):
            continue  # drawn through the geometry / ribs
        if f.kind == "effusion":
            for s in sides_of(f.side):
                extra += _effusion(t, f, s)
        elif f.kind == "pneumothorax":
            for s in sides_of(f.side):
                change, rim = _pneumothorax(t, f, s)
                extra += change
                airless[s] = np.maximum(airless[s], rim)
        elif f.kind in ("consolidation", "pneumonia", "opacity"):
            for s in sides_of(f.side):
                extra += _airspace(t, f, s, rng)
        elif f.kind == "atelectasis":
            for s in sides_of(f.side):
                extra += _atelectasis(t, f, s, rng)
        elif f.kind == "edema":
            extra += _edema(t, f)
        elif f.kind == "lesion":
            extra += _lesion(t, f, rng)
        elif f.kind == "pleural_thickening":
            for s in sides_of(f.side):
                extra += _pleural_thickening(t, f, s, rng)
        elif f.kind == "device":
            extra += _device(t, f)

    noise_rng = np.random.default_rng(nuisance.noise_seed)
    texture = ndimage.gaussian_filter(noise_rng.standard_normal(t.x.shape).astype(np.float32), 1.0)
    for s in (-1, 1):
        lung = t.lung[s] * (1 - airless[s])
        atten += (0.12 * markings + 0.05 * texture) * lung
    atten += extra

    k = 1.45 * nuisance.exposure
    img = (1 - np.exp(-k * np.clip(atten, 0, None))) ** (1.3 * nuisance.contrast)
    img = img + nuisance.noise * noise_rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def regions(anatomy: Anatomy | None = None, size: int = 128, findings: Sequence[Finding] = ()) -> dict[str, np.ndarray]:
    """Boolean masks of the normal lungs and heart on an unrotated image (for tests and figures).

    Keys: ``lung_left`` / ``lung_right`` (patient sides: the left lung is on the image right),
    ``heart``, and ``lower_left`` / ``lower_right`` (the lung's lower third).
    """
    t = _build_thorax(anatomy or Anatomy(), Nuisance(), size, findings)
    out = {"heart": t.heart > 0.5}
    for name, s in (("left", 1), ("right", -1)):
        out[f"lung_{name}"] = t.lung[s] > 0.5
        out[f"lower_{name}"] = (t.lung[s] > 0.5) & (t.zone(s, "lower") > 0.5)
        out[f"upper_{name}"] = (t.lung[s] > 0.5) & (t.zone(s, "upper") > 0.5)
    return out


REGION_THRESHOLD = 0.25  # a pixel belongs to a finding where its layer reaches this share of the layer's maximum
_DEVICE_SIDE = {"pacemaker": "left", "picc": "left", "central_line": "right"}


def _box(mask: np.ndarray) -> list[int] | None:
    """``[x0, y0, x1, y1]`` pixel box (x1, y1 exclusive) around a boolean mask, or None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def _layer_mask(layer: np.ndarray) -> np.ndarray:
    peak = float(np.abs(layer).max()) if layer.size else 0.0
    return np.abs(layer) >= REGION_THRESHOLD * peak if peak > 0 else np.zeros(layer.shape, dtype=bool)


def _finding_layers(t: _Thorax, f: Finding, anatomy: Anatomy, nuisance: Nuisance, size: int,
                    findings: Sequence[Finding]) -> list[tuple[str | None, np.ndarray]]:
    """(patient side, mask) of every part of one finding, drawn exactly as :func:`render` draws it."""
    rng = np.random.default_rng([anatomy.vessel_seed, f.variant, FINDING_KINDS.index(f.kind)])
    side_name = {1: "left", -1: "right"}
    if f.kind == "cardiomegaly":
        return [(None, t.heart > 0.5)]
    if f.kind == "widened_mediastinum":  # the lung the wider mediastinum takes away
        plain = _build_thorax(anatomy, nuisance, size, [g for g in findings if g.kind != f.kind])
        return [(side_name[s], (plain.lung[s] - t.lung[s]) > 0.5) for s in (-1, 1)]
    if f.kind == "fracture":
        moved = np.abs(_ribs(t, f) - _ribs(t, None))
        return [(side_name[s], _layer_mask(moved) & ((s * t.x) > 0)) for s in sides_of(f.side)]
    if f.kind == "effusion":
        return [(side_name[s], _layer_mask(_effusion(t, f, s))) for s in sides_of(f.side)]
    if f.kind == "pneumothorax":
        out = []
        for s in sides_of(f.side):
            change, rim = _pneumothorax(t, f, s)
            out.append((side_name[s], _layer_mask(change) | (rim > 0.5)))
        return out
    if f.kind in ("consolidation", "pneumonia", "opacity"):
        return [(side_name[s], _layer_mask(_airspace(t, f, s, rng))) for s in sides_of(f.side)]
    if f.kind == "atelectasis":
        return [(side_name[s], _layer_mask(_atelectasis(t, f, s, rng))) for s in sides_of(f.side)]
    if f.kind == "edema":
        mask = _layer_mask(_edema(t, f))
        return [(side_name[s], mask & ((s * t.x) > 0)) for s in (-1, 1)]
    if f.kind == "lesion":
        mask = _layer_mask(_lesion(t, f, rng))
        if f.detail != "multiple":
            return [(f.side, mask)]
        return [(side_name[s], mask & ((s * t.x) > 0)) for s in (-1, 1)]
    if f.kind == "pleural_thickening":
        return [(side_name[s], _layer_mask(_pleural_thickening(t, f, s, rng))) for s in sides_of(f.side)]
    if f.kind == "device":
        side = f.side if f.detail == "chest_tube" else _DEVICE_SIDE.get(f.detail or "")
        return [(side, _layer_mask(_device(t, f)))]
    raise ValueError(f"unknown finding kind {f.kind!r}: use one of {FINDING_KINDS}")


def finding_regions(findings: Sequence[Finding] = (), anatomy: Anatomy | None = None,
                    nuisance: Nuisance | None = None, size: int = 128) -> list[dict]:
    """Where :func:`render` draws each finding of one image: one record per finding and side.

    Each record: ``finding`` (index into ``findings``), ``kind``, ``side`` (patient side of that
    part, None for midline findings), ``box`` (``[x0, y0, x1, y1]`` in pixels of the ``size``
    image, x1/y1 exclusive; None when the part is not visible) and ``area`` (pixels of its mask).
    A part is the pixels where the finding's own layer reaches :data:`REGION_THRESHOLD` of its
    maximum; cardiomegaly is the heart, a widened mediastinum the lung it displaces, a fracture
    the rib pixels that moved. Reads the same seeds as :func:`render` and draws nothing.
    """
    anatomy = anatomy or Anatomy()
    nuisance = nuisance or Nuisance()
    t = _build_thorax(anatomy, nuisance, size, findings)
    out = []
    for i, f in enumerate(findings):
        for side, mask in _finding_layers(t, f, anatomy, nuisance, size, findings):
            out.append({"finding": i, "kind": f.kind, "side": side, "box": _box(mask), "area": int(mask.sum())})
    return out
