"""What each `<img>` link of the mini web is: the plan behind truth.parquet, the site files and routes.json.

`plan_links` decides every link (kind, caption, bytes, how the server answers) from the seed alone.
URLs are opaque hashes, so no curation step can read the kind off a URL.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from shared.miniweb.captions import describe, junk_alt
from shared.miniweb.datasets import PLAN, WEB, BenchImage, stream
from shared.miniweb.scenes import (
    COLORS,
    NEAR_DUP_VARIANTS,
    SHAPES,
    Scene,
    draw_scene,
    encode,
    near_duplicate,
    sample_scene,
)

# Shares of n_images (distinct image records); `match` gets the rest. With the broken and unsafe links
# added on top, about 35% of all links are matches, so keeping the top 15% is a meaningful target.
IMAGE_KIND_SHARES = {"mismatch": 0.20, "junk": 0.18, "near_dup": 0.10, "exact_dup": 0.07, "eval_leak": 0.05}
BROKEN_SHARE, UNSAFE_SHARE = 0.08, 0.04
BROKEN_REASONS = ("404", "500", "truncated", "html_as_image", "slow", "redirect_loop", "reset", "storm_503",
                  "bomb", "wrong_content_type")
UNSAFE_REASONS = ("file", "ftp", "data", "metadata_ip", "private_10", "private_192", "localhost")
KINDS = ("match", "mismatch", "junk", "near_dup", "exact_dup", "broken", "unsafe_url", "eval_leak")
BOMB_SIDE = 30000


@dataclass
class Link:
    kind: str
    alt: str
    url: str = ""              # absolute; set when the link is placed (host/port known)
    path: str | None = None    # server path, for links that point at our server
    reason: str | None = None  # sub-kind: broken/unsafe reason, near-duplicate variant
    group: str | None = None   # duplicates share their original's group
    image_id: str | None = None
    dup_of: str | None = None
    scene: Scene | None = None  # what the served image shows (None: no image)
    body: bytes | None = None   # bytes the server sends (None: nothing / a status only)
    route: dict | None = None   # routes.json entry for non-static behaviour
    sha256: str | None = None
    page_url: str | None = None  # set when the link is placed on a page
    extra_routes: dict = field(default_factory=dict)


def kind_counts(n_images: int) -> dict[str, int]:
    counts = {k: max(1, round(n_images * share)) for k, share in IMAGE_KIND_SHARES.items()}
    counts["match"] = n_images - sum(counts.values())
    counts["broken"] = max(len(BROKEN_REASONS), round(n_images * BROKEN_SHARE))
    counts["unsafe_url"] = max(len(UNSAFE_REASONS), round(n_images * UNSAFE_SHARE))
    return counts


def opaque_name(seed: int, key: str, ext: str = "jpg") -> str:
    return f"{hashlib.sha256(f'{seed}/{key}'.encode()).hexdigest()[:16]}.{ext}"


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A tiny PNG whose header declares side x side RGB pixels (a decompression bomb for naive decoders)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 65536, 9)  # a first slice of all-zero rows; the rest never comes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def _web_image(seed: int, index: int, side: int) -> tuple[Scene, object, np.random.Generator]:
    rng = stream(seed, WEB, index)
    scene = sample_scene(rng)
    return scene, draw_scene(scene, side), rng


def plan_links(seed: int, n_images: int, side: int, host: str, port: int, slow_seconds: float,
               leak_sources: list[BenchImage], read_bench, progress=None) -> list[Link]:
    """Every link of the web, in a seeded order (not yet placed on pages).

    read_bench(BenchImage) -> PIL image of a benchmark test image (to copy as an eval leak).
    """
    counts = kind_counts(n_images)
    plan = stream(seed, PLAN)
    links: list[Link] = []
    next_image = 0

    def new_image():
        nonlocal next_image
        scene, img, rng = _web_image(seed, next_image, side)
        image_id = f"web-{next_image:05d}"
        next_image += 1
        if progress is not None:
            progress()
        return image_id, scene, img, rng

    def image_link(kind: str, image_id: str, scene: Scene, body: bytes, alt: str, group: str, **kw) -> Link:
        return Link(kind=kind, alt=alt, path=f"/img/{opaque_name(seed, f'{kind}/{image_id}/{len(links)}')}",
                    group=group, image_id=image_id, scene=scene, body=body, sha256=_sha(body), **kw)

    originals: list[tuple[str, Scene, object]] = []
    for _ in range(counts["match"]):
        image_id, scene, img, rng = new_image()
        links.append(image_link("match", image_id, scene, encode(img), describe(scene, rng), image_id))
        originals.append((image_id, scene, img))

    for _ in range(counts["mismatch"]):
        image_id, scene, img, rng = new_image()
        # another image's caption, chosen to differ in shape and colour so it is unambiguously wrong
        others = [s for _, s, _ in originals if s.shape != scene.shape and s.color != scene.color]
        if others:
            other = others[int(rng.integers(len(others)))]
        else:
            other = sample_scene(rng, shape=next(s for s in SHAPES if s != scene.shape),
                                 color=next(c for c in COLORS if c != scene.color))
        links.append(image_link("mismatch", image_id, scene, encode(img), describe(other, rng), image_id))

    for _ in range(counts["junk"]):
        image_id, scene, img, rng = new_image()
        links.append(image_link("junk", image_id, scene, encode(img), junk_alt(rng), image_id))

    order = plan.permutation(len(originals))
    for j in range(counts["near_dup"]):
        orig_id, scene, img = originals[order[j % len(originals)]]
        rng = stream(seed, WEB, 10**6 + j)
        body, how = near_duplicate(img, NEAR_DUP_VARIANTS[j % len(NEAR_DUP_VARIANTS)], rng)
        links.append(image_link("near_dup", f"web-near-{j:05d}", scene, body, describe(scene, rng), orig_id,
                                reason=how, dup_of=orig_id))

    for j in range(counts["exact_dup"]):
        # from the other end of the permutation, so originals rarely get both kinds of copies
        orig_id, scene, img = originals[order[-1 - (j % len(originals))]]
        orig_link = next(link for link in links if link.image_id == orig_id and link.kind == "match")
        rng = stream(seed, WEB, 2 * 10**6 + j)
        links.append(image_link("exact_dup", orig_id, scene, orig_link.body, describe(scene, rng), orig_id,
                                dup_of=orig_id))

    leak_order = plan.permutation(len(leak_sources))
    for j in range(counts["eval_leak"]):
        src = leak_sources[leak_order[j % len(leak_sources)]]
        rng = stream(seed, WEB, 3 * 10**6 + j)
        links.append(image_link("eval_leak", src.image_id, src.scene, encode(read_bench(src), quality=92),
                                describe(src.scene, rng), f"leak:{src.image_id}"))

    for j in range(counts["broken"]):
        links.append(_broken_link(seed, j, BROKEN_REASONS[j % len(BROKEN_REASONS)], new_image, slow_seconds))

    for j in range(counts["unsafe_url"]):
        links.append(_unsafe_link(seed, j, UNSAFE_REASONS[j % len(UNSAFE_REASONS)], host, port, plan))
    return links


def _broken_link(seed: int, j: int, reason: str, new_image, slow_seconds: float) -> Link:
    """A link with a good caption whose URL fails in one of the ways real image hosts fail."""
    image_id, scene, img, rng = new_image()
    jpeg = encode(img)
    path = f"/img/{opaque_name(seed, f'broken/{j}')}"
    link = Link(kind="broken", alt=describe(scene, rng), path=path, reason=reason)
    if reason == "404":
        link.route = {"status": 404}
    elif reason == "500":
        link.route = {"status": 500}
    elif reason == "storm_503":
        link.route = {"status": 503}
    elif reason == "truncated":  # a cut JPEG, with an honest Content-Length: HTTP succeeds, decoding fails
        link.body = jpeg[: len(jpeg) // 2]
        link.route = {"status": 200, "content_type": "image/jpeg"}
    elif reason == "html_as_image":
        link.body = b"<!DOCTYPE html><html><body><h1>Access denied</h1><p>Please log in.</p></body></html>\n"
        link.route = {"status": 200, "content_type": "image/jpeg"}
    elif reason == "wrong_content_type":
        link.body = b'{"error": "not found", "hint": "this API returns JSON"}\n'
        link.route = {"status": 200, "content_type": "application/json"}
    elif reason == "slow":  # a real image, after a stall longer than any sane download timeout
        link.body, link.image_id, link.scene, link.group = jpeg, image_id, scene, image_id
        link.sha256 = _sha(jpeg)
        link.route = {"status": 200, "content_type": "image/jpeg", "stall_seconds": slow_seconds}
    elif reason == "reset":  # headers promise the whole image; the connection is reset mid-body
        link.body = jpeg
        link.route = {"status": 200, "content_type": "image/jpeg", "reset_after": len(jpeg) // 3}
    elif reason == "bomb":
        link.body = bomb_png()
        link.sha256 = _sha(link.body)
        link.route = {"status": 200, "content_type": "image/png"}
    elif reason == "redirect_loop":
        other = f"/img/{opaque_name(seed, f'broken/{j}/loop')}"
        link.route = {"status": 302, "location": other}
        link.extra_routes = {other: {"status": 302, "location": path}}
    else:
        raise ValueError(reason)
    return link


def _unsafe_link(seed: int, j: int, reason: str, host: str, port: int, plan: np.random.Generator) -> Link:
    """A link no crawler should follow: non-http schemes, cloud metadata, private ranges, our own secrets."""
    scene = sample_scene(plan)
    alt = describe(scene, plan)
    name = opaque_name(seed, f"unsafe/{j}")
    if reason == "file":
        url = "file:///etc/passwd" if j % 2 == 0 else f"file:///home/user/{name}"
    elif reason == "ftp":
        url = f"ftp://{host}/pub/{name}"
    elif reason == "data":
        url = "data:image/png;base64," + base64.b64encode(encode(draw_scene(scene, 16), "PNG")).decode()
    elif reason == "metadata_ip":
        url = "http://169.254.169.254/latest/meta-data/iam/security-credentials/" + name
    elif reason == "private_10":
        url = f"http://10.{j % 250}.0.7/images/{name}"
    elif reason == "private_192":
        url = f"http://192.168.{j % 250}.20/{name}"
    else:  # localhost points at our own server: it must never be asked for these
        path = f"/secret/{name}"
        return Link(kind="unsafe_url", alt=alt, url=f"http://localhost:{port}{path}", path=path,
                    reason=reason, body=b"internal: do not fetch\n",
                    route={"status": 200, "content_type": "image/jpeg"})
    return Link(kind="unsafe_url", alt=alt, url=url, reason=reason)
