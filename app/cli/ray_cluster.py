"""`cluster --engine ray`: per-image features on the Ray actors, the grouping on the driver.

The actors (ray_engine.LoupeActor, mode "features") compute what the photo-set endpoint computes per image
(`photoset_plan`, the orchestrator's `process`), the perceptual hash, the embedding and a thumbnail; the
driver links them with the sparse neighbour search of app.neighbors (perceptual hashes as ±1 vectors:
Hamming distance ≤ d is euclidean distance ≤ 2√d; embeddings at cosine distance 1 − min cosine) and takes
the connected components; each group of two or more is ranked by an actor through POST /v1/cluster/images
itself; the contact sheet and the JSON come from the in-process code (`write_cluster_outputs`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.cli.errors import UsageError
from app.cli.manifest import IMAGE_EXTENSIONS
from app.cli.objectstore import is_object_uri
from app.cli.ray_engine import (
    FEATURE_COLUMNS,
    LoupeActor,
    cluster_plan,
    configure_data,
    connect,
    item_row,
    ray_job,
    read_block,
    rows_of,
    s3_options,
    source_items,
)


# --- cluster ---------------------------------------------------------------------------------------------------------
def hamming_links(hashes: list[int], max_distance: int) -> list[tuple[int, int]]:
    """Pairs of 64-bit hashes within `max_distance` bits, without an N×N matrix: as ±1 vectors the euclidean
    distance is 2·sqrt(Hamming), so DBSCAN (min_samples=2: every linked pair is a core pair) on the sparse radius
    graph at 2·sqrt(max_distance + 0.5) links exactly those pairs (up to transitivity, which the union takes)."""
    from app.neighbors import dbscan

    if len(hashes) < 2:
        return []
    bits = np.array([[(h >> (63 - b)) & 1 for b in range(64)] for h in hashes], dtype=np.float32) * 2 - 1
    res = dbscan(bits, eps=2 * float(np.sqrt(max_distance + 0.5)), min_samples=2, metric="euclidean")
    return [(members[0], m) for members in res.clusters for m in members[1:]]


def cosine_threshold_links(vectors: np.ndarray, min_cosine: float) -> list[tuple[int, int]]:
    """`photoset.cosine_links` (cosine ≥ min_cosine) at scale: DBSCAN at cosine distance 1 - min_cosine."""
    from app.neighbors import dbscan

    if len(vectors) < 2:
        return []
    res = dbscan(vectors, eps=max(1e-6, 1.0 - min_cosine), min_samples=2, metric="cosine")
    return [(members[0], m) for members in res.clusters for m in members[1:]]


def group_features(features: list[dict[str, Any]], args: argparse.Namespace, mobilenet_min_cosine: float,
                   ) -> tuple[list[list[int]], list[int], list[str]]:
    """(the groups of 2+ and the singletons, as indexes into `features` of the readable images; features used)."""
    from app.neighbors import UnionFind
    from app.services.photoset import embedding_links

    ok = [k for k, f in enumerate(features) if not f["error"]]
    hashes = [int(features[k]["phash"], 16) for k in ok]
    links = set(hash_links_sorted(hamming_links(hashes, args.hash_max_distance)))
    used = ["phash"]
    for kind, name in (("clip", "clip_embedding"), ("mobilenet", "mobilenet")):
        with_emb = [i for i, k in enumerate(ok) if features[k]["embedding_kind"] == kind]
        if len(with_emb) < 2:
            continue
        vectors = np.stack([np.frombuffer(features[ok[i]]["embedding"], dtype=np.float32) for i in with_emb])
        pairs = embedding_links(vectors, args.eps) if kind == "clip" else cosine_threshold_links(vectors, mobilenet_min_cosine)
        links.update(hash_links_sorted([(with_emb[a], with_emb[b]) for a, b in pairs]))
        used.append(name)
    uf = UnionFind(len(ok))
    for a, b in links:
        uf.union(a, b)
    groups, singles = [], []
    for members in uf.components():
        if len(members) == 1:
            singles.append(ok[members[0]])
        else:
            groups.append([ok[m] for m in members])
    return groups, singles, used


def hash_links_sorted(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(a, b) if a < b else (b, a) for a, b in pairs]


def run_cluster_ray(args: argparse.Namespace) -> int:
    from app.cli.client import cli_settings
    from app.cli.commands import cluster_ids, shots_text, write_cluster_outputs

    s3 = s3_options(args)
    export_dir = args.copy_best or args.link_best
    if is_object_uri(args.folder):
        if export_dir:
            raise UsageError("--copy-best / --link-best need a local folder (the source is an object-store prefix)")
    elif not Path(args.folder).is_dir():
        raise UsageError(f"{args.folder}: no such folder")
    items = source_items(args.folder, s3, [export_dir] if export_dir else [])
    if not items:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {args.folder}")
    ids = cluster_ids(items)
    rows = [item_row(it, iid) for it, iid in zip(items, ids)]
    req = {"eps": args.eps, "hash_max_distance": args.hash_max_distance, "use_embeddings": args.embeddings,
           "rank_by_quality_models": args.quality_models}
    settings = cli_settings(args.verbose)
    if args.progress:
        print(f"reading {shots_text(items)} on Ray…", file=sys.stderr)
    t0 = time.perf_counter()
    ray, started = connect(args.address, args.verbose)
    try:
        configure_data(args.progress)
        plan = cluster_plan(ray, args.workers)
        batch = max(1, args.batch_size)
        actor = {"num_cpus": plan.actor_cpus, "compute": ray.data.ActorPoolStrategy(size=plan.workers),
                 "batch_format": "numpy"}
        ds = (ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch + 1, 2000)))
              .map_batches(read_block, batch_size=batch, batch_format="numpy", num_cpus=plan.read_cpus,
                           fn_kwargs={"s3": s3})
              .map_batches(LoupeActor, batch_size=batch, **actor,
                           fn_constructor_kwargs={"settings": settings, "mode": "features", "verbose": args.verbose,
                                                  "options": {**req, "thumb_size": args.thumb_size}}))
        by_id: dict[str, dict[str, Any]] = {}
        with ray_job():
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for f in rows_of(b, FEATURE_COLUMNS):
                    by_id[f["image_id"]] = f
        features = [by_id[iid] for iid in ids]
        groups, singles, used = group_features(features, args, settings.mobilenet_min_cosine)
        if args.progress:
            print(f"{len(groups)} group(s) to rank on Ray…", file=sys.stderr)
        answers: list[dict[str, Any]] = []
        if groups:
            largest = max(len(g) for g in groups)
            group_rows = [{"members": json.dumps([rows[k] for k in g])} for g in groups]
            ranked = ray.data.from_items(group_rows, override_num_blocks=max(1, min(len(groups), 2000))).map_batches(
                LoupeActor, batch_size=1, **actor,
                fn_constructor_kwargs={"settings": settings, "mode": "rank", "verbose": args.verbose,
                                       "options": {**req, "s3": s3},
                                       "overrides": {"max_cluster_images": max(largest, settings.max_cluster_images)}})
            with ray_job():
                for b in ranked.iter_batches(batch_size=None, batch_format="numpy"):
                    answers += [json.loads(str(a)) for a in b["answer"]]
    finally:
        if started:
            ray.shutdown()
    body = merge_answers(features, groups, singles, used, answers, req)
    thumbs = {f["image_id"]: f["thumb"] or None for f in features}
    return write_cluster_outputs(args, args.folder, body, items, ids, thumbs, time.perf_counter() - t0)


def merge_answers(features: list[dict[str, Any]], groups: list[list[int]], singles: list[int], used: list[str],
                  answers: list[dict[str, Any]], req: dict[str, Any]) -> dict[str, Any]:
    """One /v1/cluster/images-shaped answer from the per-image features and the per-group answers."""
    out_groups: list[dict[str, Any]] = []
    singletons = [features[k]["image_id"] for k in singles]
    failed = [{"image_id": f["image_id"], "error": json.loads(f["error"])} for f in features if f["error"]]
    for answer in answers:
        if "error" in answer and "groups" not in answer:
            failed += [{"image_id": iid, "error": answer["error"]} for iid in answer.get("image_ids", [])]
            continue
        out_groups += answer.get("groups", [])
        singletons += answer.get("singletons", [])
        failed += answer.get("failed", [])
    out_groups.sort(key=lambda g: (-g["size"], g["best_image_id"]))
    for gid, g in enumerate(out_groups):
        g["group_id"] = gid
    results = [json.loads(f["result"]) for f in features if f["result"]]
    return {"features_used": used, "groups": out_groups, "singletons": singletons, "failed": failed,
            "results": results,
            "params": {**req, "min_samples": 2, "metric": "cosine"}}
