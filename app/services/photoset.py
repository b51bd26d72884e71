"""Photo sets: group near-duplicate shots and pick the best of each group.

Every image is analysed once (blur, exposure, the quality score — with BRISQUE /
NIMA when those models are available — and the CLIP embedding when CLIP is
ready). Two images are linked when their 64-bit DCT perceptual hashes differ in
at most `hash_max_distance` bits (re-saves, resizes, small crops, brightness
changes) or, with CLIP, when DBSCAN (min_samples=2, so every linked pair is a
core pair) puts them in one cluster at cosine distance `eps` (same scene, a
burst with small movements), or, when CLIP is not ready but the MobileNet
embedding is, when their MobileNet cosine is at least MOBILENET_MIN_COSINE
(crops and re-framings that move the perceptual hash too far). Groups are the
connected components of the union of all the links.

Members are compared on equal terms (`app.services.equal_terms`: the field of view they share, at
the group's smallest common size), and a copy that holds less never ranks above its source
(`lesser_copy`). Resolution and compression count: the group score combines (the same weighted geometric mean)
those re-measured components and the member's others with a resolution term (its pixels over the
group's largest, square-rooted) and a compression term (its JPEG quality, estimated from the
quantisation tables, over the group's best; lossless formats count as 100). Scores within TIE of
each other tie; a tie goes to the larger image, then to common-size sharpness.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app.imaging.decode import DecodedImage
from app.imaging.sources import ImageSource
from app.neighbors import UnionFind, dbscan
from app.schemas import cluster as C
from app.services import phash as phash_svc
from app.services import score as score_svc
from app.services.equal_terms import EqualTerms, decoded, equal_terms
from app.services.orchestrator import Ingested, Orchestrator, Plan
from app.services.results import assemble

log = logging.getLogger("loupe.photoset")

RankedBy = Literal["quality_score", "sharpness_exposure"]
LinkKind = Literal["phash", "embedding", "mobilenet"]
Feature = Literal["phash", "clip_embedding", "mobilenet"]


@dataclass
class Candidate:
    index: int
    image_id: str
    score: float
    ranked_by: RankedBy
    sharpness: float  # detail variance at the group's common size
    pixels: int
    facts: dict
    width: int = 0
    height: int = 0
    jpeg_quality: int | None = None
    brightness: float | None = None  # mean grey level (0..255) of the compared copy; None: not aligned


def hash_links(hashes: list[int], max_distance: int) -> list[tuple[int, int]]:
    if len(hashes) < 2:
        return []
    close = np.triu(phash_svc.hamming_matrix(hashes) <= max_distance, k=1)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(close))]


def embedding_links(vectors: np.ndarray, eps: float) -> list[tuple[int, int]]:
    if len(vectors) < 2:
        return []
    res = dbscan(vectors, eps=eps, min_samples=2, metric="cosine")
    links = []
    for members in res.clusters:
        links += [(members[0], m) for m in members[1:]]
    return links


def cosine_links(vectors: np.ndarray, min_cosine: float) -> list[tuple[int, int]]:
    """Pairs (i < j) of L2-normalised vectors whose cosine is at least `min_cosine` (a photo set is at
    most MAX_CLUSTER_IMAGES, so the N x N product is small)."""
    close = np.triu(vectors @ vectors.T >= min_cosine, k=1)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(close))]


def candidate(it: Ingested, result, detail: float, noise: float, exposure: float, blur_threshold: float,
              max_pixels: int, best_jpeg: int, brisque: float | None = None) -> Candidate:
    """A member with its group score: the quality components, sharpness, noise and exposure replaced by the
    ones measured on equal terms, plus resolution and compression terms relative to the group."""
    q = result.quality
    comps = list(q.components if q is not None else [])
    names = {c.name for c in comps}
    model_based = bool(names & {"brisque", "nima_technical"})
    image = decoded(it)
    pixels = image.width * image.height
    jpeg = image.jpeg_quality if image.jpeg_quality is not None else 100
    terms = [score_svc.Component(c.name, c.raw, c.raw_range, c.higher_is_better, c.score, c.weight)
             for c in comps if c.name not in ("sharpness", "noise", "exposure")
             and not (c.name == "brisque" and brisque is not None)]
    clean = score_svc.noise_allowance(detail, blur_threshold)
    if brisque is not None:
        terms.append(score_svc.brisque_term(brisque, noise, clean))
    terms += [score_svc.exposure_term(exposure), score_svc.noise_term(noise, clean),
              score_svc.sharpness_term(detail, blur_threshold)]
    terms.append(score_svc.Component("resolution", pixels / max_pixels, (0.0, 1.0), True,
                                     math.sqrt(pixels / max_pixels), 1.0))
    terms.append(score_svc.Component("compression", jpeg / best_jpeg, (0.0, 1.0), True, min(1.0, jpeg / best_jpeg), 1.0))
    group_score = score_svc.combine(terms) or 0.0
    facts = {
        "quality": q.score if q is not None else None,
        "band": q.band if q is not None else None,
        "laplacian_variance": it.gate.get("laplacian_variance", 0.0),
        "is_blurry": result.blur.is_blurry if result.blur else None,
        "exposure_verdict": result.exposure.verdict if result.exposure else None,
        "blur_threshold": blur_threshold,
    }
    return Candidate(index=it.index, image_id=it.image_id, score=float(group_score),
                     ranked_by="quality_score" if model_based else "sharpness_exposure",
                     sharpness=float(detail), pixels=pixels, facts=facts, width=image.width,
                     height=image.height, jpeg_quality=image.jpeg_quality)


def describe(c: Candidate) -> str:
    f = c.facts
    parts = [f"group score {c.score:.2f} (quality {f['quality']:.2f}, {f['band']})" if f["quality"] is not None
             else f"group score {c.score:.2f}"]
    parts.append(f"{c.width}×{c.height} px" + (f", JPEG quality {c.jpeg_quality}" if c.jpeg_quality else ""))
    parts.append(f"detail {c.sharpness:.0f} at the common size"
                 + (" — blurry" if f["is_blurry"] else ""))
    if f["exposure_verdict"] and f["exposure_verdict"] != "ok":
        parts.append(f["exposure_verdict"])
    return ", ".join(parts)


#: group scores within this of the best count as a tie: differences below 0.01 come from JPEG
#: noise in the exposure histogram, not from a visible difference. A tie goes to the larger image
#: (a crop or a smaller copy of the same scene holds less), then to common-size sharpness.
TIE = 0.01


#: a copy's detail at the common size may exceed its source's by this factor from re-encoding alone
#: (a crop re-saved at the same JPEG quality measured up to 1.06x its source's on skimage's photos)
COPY_DETAIL_SLACK = 1.1
#: and its mean grey level may differ by this much (JPEG moves it by a fraction of a level)
COPY_BRIGHTNESS_SLACK = 2.5


def lesser_copy(b: Candidate, a: Candidate) -> bool:
    """True when `b` is a copy of `a` that holds less: the two are aligned on one field of view, `b` has
    no more pixels and no better JPEG quality (one of them strictly less: a crop, a smaller or a lower-
    quality re-save), the same exposure (mean grey level within COPY_BRIGHTNESS_SLACK) and no more
    detail at the common size (within COPY_DETAIL_SLACK). Re-saving cannot add what the source lacks,
    so whatever else `b` scores better on (a noise reading that JPEG smoothed, BRISQUE on the smoothed
    pixels, a grid that its shifted re-save hides) is an artefact of the copying: `b` never ranks above
    `a`. Burst frames of one camera have equal pixels and quality and are never copies of each other."""
    if a.brightness is None or b.brightness is None:
        return False
    qa, qb = a.jpeg_quality or 100, b.jpeg_quality or 100
    return (b.pixels <= a.pixels and qb <= qa and (b.pixels < a.pixels or qb < qa)
            and abs(b.brightness - a.brightness) <= COPY_BRIGHTNESS_SLACK
            and b.sharpness <= COPY_DETAIL_SLACK * a.sharpness)


def by_score(members: list[Candidate]) -> list[Candidate]:
    """Best first by group score. Members whose group score is within TIE of the best are ranked among
    themselves by pixels, then sharpness at the common size; the rest follow by score, and so on."""
    rest = sorted(members, key=lambda c: (-c.score, c.index))
    ranked: list[Candidate] = []
    while rest:
        top = rest[0].score
        tied = [c for c in rest if top - c.score < TIE]
        ranked += sorted(tied, key=lambda c: (-c.pixels, -c.sharpness, c.index))
        rest = [c for c in rest if top - c.score >= TIE]
    return ranked


def rank_group(members: list[Candidate]) -> list[Candidate]:
    """Best first: the score order (`by_score`), except that a lesser copy never ranks above its source —
    each place goes to the best-scored member that is not a lesser copy of another member still unplaced
    (pixels and JPEG quality fall strictly along "is a lesser copy of", so there is always one)."""
    rest = by_score(members)
    ranked: list[Candidate] = []
    while rest:
        pick = next(c for c in rest if not any(lesser_copy(c, o) for o in rest if o is not c))
        ranked.append(pick)
        rest.remove(pick)
    return ranked


def resolution_words(loser: Candidate, best: Candidate) -> str:
    linear = math.sqrt(loser.pixels / best.pixels)
    for frac, words in ((0.5, "1/2"), (1 / 3, "1/3"), (0.25, "1/4"), (2 / 3, "2/3"), (0.75, "3/4")):
        if abs(linear - frac) < 0.03:
            return f"same scene at {words} the resolution ({loser.width}×{loser.height} vs {best.width}×{best.height})"
    return (f"same scene at {linear:.0%} of the resolution ({loser.width}×{loser.height} vs "
            f"{best.width}×{best.height})")


def rejection(loser: Candidate, best: Candidate) -> str:
    why = []
    if best.score - loser.score >= TIE:
        why.append(f"lower group score {loser.score:.2f} < {best.score:.2f}")
    elif lesser_copy(loser, best):
        why.append(f"a copy of {best.image_id} that holds less (no more pixels, no better JPEG quality, the same "
                   f"exposure, at most {COPY_DETAIL_SLACK - 1:.0%} more detail): a copy never ranks above its source, "
                   f"though its group score "
                   f"{loser.score:.2f} is {'higher' if loser.score > best.score else 'as high'}")
    if loser.facts["is_blurry"]:
        why.append(f"blurry (Laplacian variance {loser.facts['laplacian_variance']:.0f} < BLUR_THRESHOLD "
                   f"{loser.facts['blur_threshold']:g})")
    elif loser.sharpness < 0.9 * best.sharpness:
        why.append(f"less sharp at the common size (detail {loser.sharpness:.0f} < {best.sharpness:.0f})")
    if loser.pixels < 0.95 * best.pixels:
        why.append(resolution_words(loser, best))
    lq, bq = loser.jpeg_quality or 100, best.jpeg_quality or 100
    if lq < bq - 2:
        why.append(f"JPEG quality {lq} vs {bq}" if best.jpeg_quality else f"JPEG quality {lq} vs a lossless original")
    if loser.facts["exposure_verdict"] not in (None, "ok"):
        why.append(loser.facts["exposure_verdict"])
    return "; ".join(why) or "equal scores; kept the earlier shot"


async def common_view_brisque(orch: Orchestrator, group: list[Ingested], terms: EqualTerms) -> list[float | None]:
    """BRISQUE of each member's compared copy, when BRISQUE ran on the members (else None each): like
    sharpness, it rates detail per pixel, and a smaller copy or a crop would otherwise be judged on other
    content at another scale."""
    if not all(isinstance(it.models.get("brisque"), float) for it in group):
        return [None] * len(group)
    views = [DecodedImage(pixels=v, width=v.shape[1], height=v.shape[0], sha256="", format="view", n_bytes=0)
             for v in terms.views]
    try:
        values = await orch.registry.run("brisque", views)
    except Exception:  # noqa: BLE001 - fall back to each member's own BRISQUE
        log.warning("BRISQUE on the common views failed; ranking with each member's own", exc_info=True)
        return [None] * len(group)
    return [float(v) if v is not None else None for v in values]


def photoset_plan(registry: Any, use_embeddings: bool, rank_by_quality_models: bool) -> Plan:
    """What a photo set's grouping computes per image (the API's /v1/cluster/images and the CLI's Ray engine):
    the gate, the quality scores, and one embedding — CLIP's when it can run, else MobileNet's when its file is
    there, else none (the perceptual hash alone groups)."""
    use_clip = use_embeddings and registry.info("clip").usable
    mobile = registry.info("mobilenet")
    use_mobilenet = use_embeddings and not use_clip and mobile.files_present and mobile.usable
    return Plan(blur=True, exposure=True, quality=True, embedding=use_clip, quality_models=rank_by_quality_models,
                mobilenet=use_mobilenet)


async def cluster_photoset(orch: Orchestrator, sources: list[ImageSource], req: C.PhotoSetRequest) -> C.PhotoSetResponse:
    t0 = time.perf_counter()
    registry = orch.registry
    plan = photoset_plan(registry, req.use_embeddings, req.rank_by_quality_models)
    use_clip, use_mobilenet = plan.embedding, plan.mobilenet
    items = await orch.process(sources, plan)
    results = [assemble(it, plan, orch.settings, orch.registry) for it in items]
    ok = [it for it in items if it.image is not None]
    failed = [C.FailedImage(image_id=it.image_id, error=it.error) for it in items if it.error is not None]

    hashes = await orch.in_pool(lambda: [phash_svc.phash_image(it.image, orch.settings.analysis_max_dim) for it in ok])
    links: dict[tuple[int, int], set[LinkKind]] = {}
    for a, b in hash_links(hashes, req.hash_max_distance):
        links.setdefault((a, b), set()).add("phash")
    features: list[Feature] = ["phash"]
    with_emb = [k for k, it in enumerate(ok)
                if it.models.get("clip") is not None and not isinstance(it.models["clip"], BaseException)]
    if use_clip and len(with_emb) >= 2:
        vectors = np.stack([np.asarray(ok[k].models["clip"], dtype=np.float32) for k in with_emb])
        for a, b in await orch.in_pool(embedding_links, vectors, req.eps):
            i, j = sorted((with_emb[a], with_emb[b]))
            links.setdefault((i, j), set()).add("embedding")
        features.append("clip_embedding")
    with_mobile = [k for k, it in enumerate(ok)
                   if it.models.get("mobilenet") is not None and not isinstance(it.models["mobilenet"], BaseException)]
    if use_mobilenet and len(with_mobile) >= 2:
        vectors = np.stack([np.asarray(ok[k].models["mobilenet"], dtype=np.float32) for k in with_mobile])
        for a, b in cosine_links(vectors, orch.settings.mobilenet_min_cosine):
            links.setdefault((with_mobile[a], with_mobile[b]), set()).add("mobilenet")
        features.append("mobilenet")

    uf = UnionFind(len(ok))
    for a, b in links:
        uf.union(a, b)

    by_index = {it.index: r for it, r in zip(items, results)}
    groups: list[C.PhotoGroup] = []
    singletons: list[str] = []
    for members in uf.components():
        if len(members) == 1:
            singletons.append(ok[members[0]].image_id)
            continue
        group = [ok[k] for k in members]
        terms = await orch.in_pool(equal_terms, group, orch.settings)
        images = [decoded(it) for it in group]
        max_pixels = max(image.width * image.height for image in images)
        best_jpeg = max(image.jpeg_quality if image.jpeg_quality is not None else 100 for image in images)
        brisques = await common_view_brisque(orch, group, terms)
        cands = [candidate(it, by_index[it.index], d, n, e, orch.settings.blur_threshold, max_pixels, best_jpeg, b)
                 for it, d, n, e, b in zip(group, terms.details, terms.noise, terms.exposure, brisques)]
        if terms.aligned:
            for c, level in zip(cands, terms.brightness):
                c.brightness = level
        ranked = rank_group(cands)
        best = ranked[0]
        runner = ranked[1]
        kinds = sorted({kind for (a, b), ks in links.items() if a in members and b in members for kind in ks})
        where = "on their common field of view" if terms.aligned else "on their whole frames (they could not be aligned)"
        reason = (f"{best.image_id} ranks first by {best.ranked_by.replace('_', ' ')}, compared {where} at {terms.size} px "
                  f"(longest side): {describe(best)}; next best {runner.image_id}: {describe(runner)}.")
        copies = [c.image_id for c in ranked[1:] if c.score > best.score - TIE and lesser_copy(c, best)]
        if copies:
            reason += (f" {', '.join(copies)} scored as high or higher, but {'is a copy' if len(copies) == 1 else 'are copies'}"
                       f" of {best.image_id} that {'holds' if len(copies) == 1 else 'hold'} less, and a copy never ranks"
                       " above its source.")
        groups.append(C.PhotoGroup(
            group_id=0, size=len(ranked), best_image_id=best.image_id, reason=reason, linked_by=kinds,
            members=[C.RankedMember(image_id=c.image_id, rank=r + 1, quality_score=round(c.score, 4),
                                    ranked_by=c.ranked_by, is_best=r == 0,
                                    rejected_reason=None if r == 0 else rejection(c, best))
                     for r, c in enumerate(ranked)]))
    groups.sort(key=lambda g: (-g.size, g.best_image_id))
    for gid, g in enumerate(groups):
        g.group_id = gid
    return C.PhotoSetResponse(
        features_used=features,
        params={"eps": req.eps, "hash_max_distance": req.hash_max_distance, "use_embeddings": req.use_embeddings,
                "rank_by_quality_models": req.rank_by_quality_models, "min_samples": 2, "metric": "cosine"},
        groups=groups, singletons=singletons, failed=failed, results=results,
        processing_time_ms=round((time.perf_counter() - t0) * 1000, 3))
