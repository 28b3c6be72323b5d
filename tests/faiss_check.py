#!/usr/bin/python3
"""Checks a psrec export the way a serving team would use it.

usage: faiss_check.py EXPORT_DIR PSREC_BINARY [N_USERS]

1. manifest.json, <table>.npy and <table>.ids.npy load with numpy.load
   unchanged (float32 C-order matrices, int64 ids) and agree with each other.
2. item.fvecs holds the item rows [b_i, q_i] in the standard .fvecs layout.
3. For sampled users, an exact Faiss inner-product index (IndexFlatIP) over
   item.fvecs, queried with [1, p_u] as the manifest documents, returns the
   same top-10 as `psrec recommend`, and global_mean + b_u + the inner
   product is the score psrec prints.

Exits 0 when everything agrees; prints what differs and exits 1 if not.
Run by tests/test_cli_serving.c with Debian's /usr/bin/python3.
"""
import json
import os
import subprocess
import sys

import faiss
import numpy as np

K = 10


def fail(msg):
    print("faiss_check: FAIL: " + msg)
    sys.exit(1)


def read_fvecs(path):
    raw = np.fromfile(path, dtype="<i4")
    if raw.size == 0:
        return np.zeros((0, 0), dtype=np.float32)
    d = int(raw[0])
    if raw.size % (d + 1):
        fail("%s: %d words is not a whole number of %d-dim vectors" % (path, raw.size, d))
    recs = raw.reshape(-1, d + 1)
    if not (recs[:, 0] == d).all():
        fail("%s: vectors of different dimensions" % path)
    return recs[:, 1:].copy().view("<f4")


def recommend(binary, export, user, k):
    out = subprocess.run([binary, "recommend", "--model", export, "--user", str(user),
                          "-k", str(k)], capture_output=True, text=True)
    if out.returncode != 0:
        fail("psrec recommend --user %s: exit %d: %s" % (user, out.returncode, out.stderr))
    items, scores, fallback = [], [], False
    for line in out.stdout.splitlines():
        if line.startswith("# fallback"):
            fallback = True
        if not line.strip() or line.startswith("#"):
            continue
        rank, item, score = line.split()
        if int(rank) != len(items) + 1:
            fail("psrec recommend: ranks out of order: %r" % line)
        items.append(int(item))
        scores.append(float(score))
    return items, np.array(scores), fallback


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    export, binary = sys.argv[1], sys.argv[2]
    n_sample = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    with open(os.path.join(export, "manifest.json")) as f:
        man = json.load(f)
    if man["model"] != "mf":
        fail("model %r" % man["model"])
    gm = float(man["global_mean"])

    tables = {}
    for name in ("user", "item"):
        meta = man["tables"][name]
        rows = np.load(os.path.join(export, meta["file"]))
        ids = np.load(os.path.join(export, meta["ids"]))
        if rows.dtype != np.float32 or not rows.flags["C_CONTIGUOUS"] or rows.ndim != 2:
            fail("%s: want a C-order float32 matrix, got %s %s" % (meta["file"], rows.dtype,
                                                                  rows.shape))
        if ids.dtype != np.int64 or ids.shape != (rows.shape[0],):
            fail("%s: want %d int64 ids, got %s %s" % (meta["ids"], rows.shape[0], ids.dtype,
                                                      ids.shape))
        if rows.shape != (meta["rows"], meta["dim"]):
            fail("%s: shape %s, manifest says (%d, %d)" % (meta["file"], rows.shape,
                                                           meta["rows"], meta["dim"]))
        if ids.size > 1 and not (ids.view(np.uint64)[1:] > ids.view(np.uint64)[:-1]).all():
            fail("%s: ids not ascending" % meta["ids"])
        tables[name] = (rows, ids.view(np.uint64))
    user, user_ids = tables["user"]
    item, item_ids = tables["item"]

    fv = man["fvecs"]
    xb = read_fvecs(os.path.join(export, fv["file"]))
    if not np.array_equal(xb, item):
        fail("item.fvecs differs from item.npy")
    fv_ids = np.load(os.path.join(export, fv["ids"])).view(np.uint64)
    if not np.array_equal(fv_ids, item_ids):
        fail("fvecs ids differ from item ids")

    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    rng = np.random.default_rng(1234)
    sample = rng.choice(user.shape[0], size=min(n_sample, user.shape[0]), replace=False)
    # the documented query: [1, p_u]; inner product = b_i + <p_u, q_i>
    queries = np.hstack([np.ones((sample.size, 1), np.float32), user[sample, 1:]])
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    dist, idx = index.search(queries, K)

    exact_all = item.astype(np.float64) @ queries.astype(np.float64).T  # items x users
    swaps = 0
    for r, u in enumerate(sample):
        uid = int(user_ids[u])
        items, scores, fallback = recommend(binary, export, uid, K)
        if fallback:
            fail("user %d: psrec used the fallback for a known user" % uid)
        faiss_items = [int(fv_ids[i]) for i in idx[r]]
        if len(items) != K:
            fail("user %d: psrec returned %d items" % (uid, len(items)))
        exact = exact_all[:, r]
        pos = {int(i): n for n, i in enumerate(item_ids)}
        for j in range(K):
            if items[j] != faiss_items[j]:
                a, b = exact[pos[items[j]]], exact[pos[faiss_items[j]]]
                if abs(a - b) > 1e-5 * max(1.0, abs(a)):
                    fail("user %d rank %d: psrec %d (%.7f), faiss %d (%.7f)"
                         % (uid, j + 1, items[j], a, faiss_items[j], b))
                swaps += 1
        want = gm + float(user[u, 0]) + dist[r].astype(np.float64)
        if not np.allclose(scores, want, rtol=1e-5, atol=1e-4):
            fail("user %d: psrec scores %s, global_mean + b_u + faiss %s"
                 % (uid, scores, want))
    print("faiss_check: OK: %d users, top-%d identical to an exact Faiss inner-product "
          "index over item.fvecs (%d near-tie swaps); %d users x %d items, dim %d"
          % (sample.size, K, swaps, user.shape[0], item.shape[0], item.shape[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
