"""Photo sets: group near-duplicate shots and pick the best of each group.

Every image is analysed once (blur, exposure, the quality score — with BRISQUE /
NIMA when those models are available — and the CLIP embedding when CLIP is
ready). Two images are linked when their 64-bit DCT perceptual hashes differ in
at most `hash_max_distance` bits (re-saves, resizes, small crops, brightness
changes) or, with CLIP, when DBSCAN (min_samples=2, so every linked pair is a
core pair) puts them in one cluster at cosine distance `eps` (same scene, a
burst with small movements). Groups are the connected components of the union
of both link kinds. Members are ranked by the 0–1 quality score; ties fall to
sharpness, then resolution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from app.imaging.sources import ImageSource
from app.schemas import cluster as C
from app.services import cluster as cluster_svc
from app.services import phash as phash_svc
from app.services.orchestrator import Ingested, Orchestrator, Plan



@dataclass
class Candidate:
    index: int
    image_id: str
    score: float
    ranked_by: str
    sharpness: float
    pixels: int
    facts: dict


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def hash_links(hashes: list[int], max_distance: int) -> list[tuple[int, int]]:
    if len(hashes) < 2:
        return []
    close = np.triu(phash_svc.hamming_matrix(hashes) <= max_distance, k=1)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(close))]


def embedding_links(vectors: np.ndarray, eps: float) -> list[tuple[int, int]]:
    if len(vectors) < 2:
        return []
    res = cluster_svc.dbscan(vectors, eps=eps, min_samples=2, metric="cosine")
    links = []
    for members in res.clusters:
        links += [(members[0], m) for m in members[1:]]
    return links


def candidate(it: Ingested, result) -> Candidate:
    q = result.quality
    comps = {c.name for c in (q.components if q is not None else [])}
    model_based = bool(comps & {"brisque", "nima_technical"})
    var = it.gate.get("laplacian_variance", 0.0)
    facts = {
        "quality": q.score if q is not None else None,
        "band": q.band if q is not None else None,
        "laplacian_variance": var,
        "is_blurry": result.blur.is_blurry if result.blur else None,
        "exposure_verdict": result.exposure.verdict if result.exposure else None,
        "blur_threshold": result.blur.thresholds.blur_threshold if result.blur else None,
    }
    return Candidate(index=it.index, image_id=it.image_id, score=float(q.score if q and q.score is not None else 0.0),
                     ranked_by="quality_score" if model_based else "sharpness_exposure",
                     sharpness=float(var), pixels=(it.image.width * it.image.height) if it.image else 0, facts=facts)


def describe(c: Candidate) -> str:
    f = c.facts
    parts = [f"quality {c.score:.2f} ({f['band']})"]
    parts.append(f"Laplacian variance {f['laplacian_variance']:.0f}"
                 + (" — blurry" if f["is_blurry"] else ""))
    if f["exposure_verdict"] and f["exposure_verdict"] != "ok":
        parts.append(f["exposure_verdict"])
    return ", ".join(parts)


#: quality scores closer than this count as a tie (sharpness then decides): differences below
#: 0.01 come from JPEG noise in the exposure histogram, not from a visible difference
SCORE_TIE = 2  # decimals


def rank_group(members: list[Candidate]) -> list[Candidate]:
    return sorted(members, key=lambda c: (-round(c.score, SCORE_TIE), -c.sharpness, -c.pixels, c.index))


def rejection(loser: Candidate, best: Candidate) -> str:
    why = []
    if round(loser.score, SCORE_TIE) < round(best.score, SCORE_TIE):
        why.append(f"lower quality score {loser.score:.2f} < {best.score:.2f}")
    if loser.facts["is_blurry"]:
        why.append(f"blurry (Laplacian variance {loser.sharpness:.0f} < BLUR_THRESHOLD {loser.facts['blur_threshold']:g})")
    elif loser.sharpness < best.sharpness:
        why.append(f"less sharp (Laplacian variance {loser.sharpness:.0f} < {best.sharpness:.0f})")
    if loser.facts["exposure_verdict"] not in (None, "ok"):
        why.append(loser.facts["exposure_verdict"])
    if not why and loser.pixels < best.pixels:
        why.append(f"smaller ({loser.pixels} < {best.pixels} pixels)")
    return "; ".join(why) or "equal scores; kept the earlier shot"


async def cluster_photoset(orch: Orchestrator, sources: list[ImageSource], req: C.PhotoSetRequest) -> C.PhotoSetResponse:
    t0 = time.perf_counter()
    registry = orch.registry
    clip_info = registry.describe("clip")
    use_clip = req.use_embeddings and (clip_info["state"] == "ready"
                                       or (clip_info["files_present"] and clip_info["state"] != "failed"))
    plan = Plan(blur=True, exposure=True, quality=True, embedding=use_clip, quality_models=req.rank_by_quality_models)
    items = await orch.process(sources, plan)
    results = [orch.assemble(it, plan) for it in items]
    ok = [it for it in items if it.image is not None]
    failed = [C.FailedImage(image_id=it.image_id, error=it.error) for it in items if it.error is not None]

    hashes = await orch.in_pool(lambda: [phash_svc.phash_image(it.image, orch.settings.analysis_max_dim) for it in ok])
    links: dict[tuple[int, int], set[str]] = {}
    for a, b in hash_links(hashes, req.hash_max_distance):
        links.setdefault((a, b), set()).add("phash")
    features = ["phash"]
    with_emb = [k for k, it in enumerate(ok)
                if it.models.get("clip") is not None and not isinstance(it.models["clip"], BaseException)]
    if use_clip and len(with_emb) >= 2:
        vectors = np.stack([np.asarray(ok[k].models["clip"], dtype=np.float32) for k in with_emb])
        for a, b in await orch.in_pool(embedding_links, vectors, req.eps):
            i, j = sorted((with_emb[a], with_emb[b]))
            links.setdefault((i, j), set()).add("embedding")
        features.append("clip_embedding")

    uf = UnionFind(len(ok))
    for a, b in links:
        uf.union(a, b)
    comps: dict[int, list[int]] = {}
    for k in range(len(ok)):
        comps.setdefault(uf.find(k), []).append(k)

    by_index = {it.index: r for it, r in zip(items, results)}
    groups: list[C.PhotoGroup] = []
    singletons: list[str] = []
    for members in comps.values():
        if len(members) == 1:
            singletons.append(ok[members[0]].image_id)
            continue
        cands = [candidate(ok[k], by_index[ok[k].index]) for k in members]
        ranked = rank_group(cands)
        best = ranked[0]
        runner = ranked[1]
        kinds = sorted({kind for (a, b), ks in links.items() if a in members and b in members for kind in ks})
        reason = (f"{best.image_id} ranks first by {best.ranked_by.replace('_', ' ')}: {describe(best)}; "
                  f"next best {runner.image_id}: {describe(runner)}.")
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
