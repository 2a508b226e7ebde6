"""The reference map (payload/refmap.py): rewriting at its offsets gives the bytes the
scan gives, for every kind of file and every way of cutting them into pieces; a map
that does not fit its bytes is refused with one line."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from nix_prefix.payload import hashes, nar, nix32, refmap, retarget, textfile
from nix_prefix.payload.manifest import Manifest, PathEntry
from nix_prefix.payload.rewrite import PathRewriter
from nix_prefix.payload.tree import Sink

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
OLD = b"/tmp/nix-build-longprefix-xx/store"  # never retargeted: one spelling
PADDED = b"/tmp/nix-build/////////////store"  # retargeted before: two spellings
rng = random.Random(25)


def hash_part() -> bytes:
    return bytes(rng.choice(nix32.ALPHABET.encode()) for _ in range(32))


CLOSURE = [hash_part() for _ in range(4)]
EXTRA = hash_part()  # an output a .drv names that the closure does not ship
NAMES = [h.decode() + "-p" + str(i) for i, h in enumerate(CLOSURE)]
RENAMING = {h: hash_part() for h in CLOSURE[:3] + [EXTRA]}  # CLOSURE[3] keeps its hash


def corpus_files(store_dir: bytes) -> dict[str, bytes]:
    """Files of every kind a rewrite meets, naming the store dir and hash parts in
    every way: at the start and end, straddling pieces, overlapping, in long runs."""
    canon = refmap.canonical(store_dir)
    a, b, c, d = CLOSURE
    ref = store_dir + b"/" + a + b"-p0"
    big = bytearray(os.urandom(5 << 18))
    for at in range(1000, len(big) - 200, 65_521):
        big[at:at + len(ref)] = ref
    return {
        "script.sh": b"#!" + ref + b"/bin/sh\nexec " + canon + b"/" + b + b"-p1/bin/x\n",
        "data.txt": (CORPUS / "data.txt").read_bytes() + b"\n" + canon + b"/" + d + b"\n",
        "lib.so": b"\x7fELF\x02\x01" + b"\0" * 58 + ref + b"\0" + canon + b"\0" + ref,
        "runs.txt": b"0" * 40 + a + b + a[:20] + c + b"\n" + a[5:] + a + b"-" + EXTRA,
        "overlap": b"\0" + a + a[:16] + b"\0" + (a[16:] + a)[:40] + b"\0",
        "starts": ref + b"\0" * 100 + ref,
        "canon-only": b"see " + canon + b"\n",
        "payload.sh": b"#!/bin/sh\ntail -c +40 $0\n" + ref + b"\n\x00\x01binary" + ref,
        "utf16.txt": (ref.decode() + "\n").encode("utf-16"),
        "nul-list": ref + b"\0" + ref + b"\0",
        "empty": b"",
        "plain.txt": b"nothing here\n",
        "hash-only.txt": b"ref " + c + b"-p2 and " + EXTRA + b"\n",
        "big.bin": bytes(big),
        "big.txt": (b"line " + ref + b" and more text\n") * 25_000,
        "lib.jar": b"PK\x03\x04" + ref,
        "store-dir-run": store_dir + store_dir + b"/" + store_dir[1:] + b"x" * 31,
    }


def make_tree(root: Path, store_dir: bytes) -> Path:
    root.mkdir()
    (root / "sub").mkdir()
    for name, data in corpus_files(store_dir).items():
        (root / ("sub" if name.startswith("big") else "") / name).write_bytes(data)
        if name == "script.sh":
            (root / name).chmod(0o755)
    os.symlink(store_dir.decode() + "/" + NAMES[1] + "/lib", root / "link")
    os.symlink(refmap.canonical(store_dir).decode() + "/" + NAMES[2], root / "sub" / "clink")
    os.symlink("plain.txt", root / "relative")
    return root


class Events(Sink):
    """A tree's events, replayed with contents cut into pieces of ``piece`` bytes."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def __getattribute__(self, name: str):  # type: ignore[no-untyped-def]
        if name in ("events", "replay", "__dict__", "__class__"):
            return object.__getattribute__(self, name)
        return lambda *args: self.events.append((name, args))

    def replay(self, sink: Sink, piece: int) -> None:
        for name, args in self.events:
            if name == "contents":
                data = args[0]
                for at in range(0, len(data), piece):
                    sink.contents(data[at:at + piece])
            else:
                getattr(sink, name)(*args)


def events_of(tree: Path) -> Events:
    ev = Events()
    nar.dump_path(os.fsencode(tree), ev)
    ev.finish()
    return ev


def nar_of(ev: Events, sink_of, piece: int = 1 << 20) -> bytes:
    """The NAR that ``sink_of(out)`` sends to ``out`` when ``ev`` is replayed in pieces."""
    parts: list[bytes] = []
    writer = nar.NarWriter(parts.append)
    ev.replay(sink_of(writer), piece)
    return b"".join(parts)


def map_of(ev: Events, store_dir: bytes, extra=(EXTRA,), piece: int = 1 << 20,
           names=NAMES) -> refmap.PathRefs:
    rec = refmap.Recorder(NAMES[0], store_dir, refmap.candidates(names, extra))
    ev.replay(rec, piece)
    return rec.result(b"\0" * 32)


@pytest.fixture(scope="module", params=[OLD, PADDED], ids=["one-spelling", "padded"])
def tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    store_dir = request.param
    return store_dir, events_of(make_tree(tmp_path_factory.mktemp("t") / "p", store_dir))


@pytest.mark.parametrize("renaming", [{}, RENAMING], ids=["same-length", "exact"])
@pytest.mark.parametrize("piece", [1 << 20, 4093, 251])
def test_the_map_rewrites_as_the_scan_does(tree, renaming, piece: int) -> None:
    store_dir, ev = tree
    new = retarget.padded_store_dir(store_dir.decode(), "/home/u/n/store").encode()
    scanned = nar_of(ev, lambda out: PathRewriter(out, store_dir, new, renaming), piece)
    refs = map_of(ev, store_dir, piece=max(piece, 64))
    rw = refmap.Rewrite(store_dir, new, renaming, refmap.candidates(NAMES, [EXTRA]))
    mapped = nar_of(ev, lambda out: PathRewriter(out, store_dir, new, renaming,
                                                 mapped=(refs, rw)), piece)
    assert mapped == scanned
    # and the rewrite did rewrite: text got the canonical store dir, binaries the padded one
    assert b"/home/u/n/store/" in mapped and new + b"/" in mapped
    if renaming:
        assert RENAMING[CLOSURE[0]] in mapped and CLOSURE[0] not in mapped.replace(
            b"PK\x03\x04" + store_dir + b"/" + CLOSURE[0], b"")


def test_the_map_is_the_same_however_the_bytes_came(tree) -> None:
    store_dir, ev = tree
    whole = map_of(ev, store_dir, piece=1 << 22)
    for piece in (97, 1000):
        cut = map_of(ev, store_dir, piece=piece)
        assert {o: (f.offsets, f.kinds, f.text) for o, f in cut.files.items()} == \
            {o: (f.offsets, f.kinds, f.text) for o, f in whole.files.items()}


def test_the_map_records_the_classifiers_verdict(tree) -> None:
    store_dir, ev = tree
    refs = map_of(ev, store_dir)
    files = corpus_files(store_dir)
    regular = [a[0] for n, a in ev.events if n == "regular"]
    ordinals = {rel: i for i, (n, a) in enumerate(
        e for e in ev.events if e[0] in ("regular", "symlink")) for rel in [a[0]]}
    for rel in regular:
        name = rel.decode().rpartition("/")[2]
        f = refs.files.get(ordinals[rel])
        if f is not None:
            assert f.text == textfile.is_text(files[name]), name
    assert refs.files[ordinals[b"link"]].symlink


def test_serialisation_round_trips_and_is_small(tree) -> None:
    store_dir, ev = tree
    path = map_of(ev, store_dir)
    m = refmap.RefMap(store_dir, [path] + [refmap.PathRefs(n, b"\1" * 32, {}) for n in NAMES[1:]],
                      [EXTRA, CLOSURE[1]])
    data = m.to_bytes()
    back = refmap.from_bytes(data)
    assert back.to_bytes() == data
    assert back.extra == [EXTRA]  # the closure's own hash parts are not stored twice
    assert back.candidates == refmap.candidates(NAMES, [EXTRA])
    occurrences = sum(len(f.offsets) for f in path.files.values())
    assert occurrences > 100 and len(data) < 4 * occurrences + 400


@pytest.mark.parametrize("damage", ["truncated", "flipped", "magic", "trailing"])
def test_a_damaged_map_is_refused(tree, damage: str) -> None:
    store_dir, ev = tree
    data = refmap.RefMap(store_dir, [map_of(ev, store_dir)]).to_bytes()
    bad = {"truncated": data[:-40], "flipped": data[:60] + bytes([data[60] ^ 1]) + data[61:],
           "magic": b"x" + data[1:], "trailing": data + b"\0"}[damage]
    with pytest.raises(refmap.RefMapError) as e:
        refmap.from_bytes(bad)
    assert "\n" not in str(e.value) and e.value.exit_code == 3


def lying(ev: Events, store_dir: bytes, how: str) -> refmap.PathRefs:
    refs = map_of(ev, store_dir)
    first = min(o for o, f in refs.files.items() if not f.symlink and len(f.offsets) > 1)
    f = refs.files[first]
    if how == "past-the-end":
        f.offsets[-1] += 1 << 30
    elif how == "wrong-bytes":
        f.offsets[0] += 1
    elif how == "hash-not-a-hash":
        f.kinds[0] = refmap.HASH
    elif how == "kind":
        f.symlink = True
    elif how == "more-files":
        refs.files[10_000] = refmap.FileRefs(10_000, False, True, [0], [0])
    elif how == "overlapping":
        f.offsets[1] = f.offsets[0] + 1
        f.kinds[0] = f.kinds[1] = refmap.EMBEDDED
    return refs


@pytest.mark.parametrize("how", ["past-the-end", "wrong-bytes", "hash-not-a-hash", "kind",
                                 "more-files", "overlapping"])
def test_a_lying_map_is_refused_with_one_line(tree, how: str) -> None:
    store_dir, ev = tree
    new = retarget.padded_store_dir(store_dir.decode(), "/home/u/n/store").encode()
    rw = refmap.Rewrite(store_dir, new, RENAMING, refmap.candidates(NAMES, [EXTRA]))
    refs = lying(ev, store_dir, how)
    with pytest.raises(refmap.RefMapError) as e:
        nar_of(ev, lambda out: PathRewriter(out, store_dir, new, RENAMING, mapped=(refs, rw)))
    assert "\n" not in str(e.value) and e.value.exit_code == 3
    assert str(e.value).startswith("reference map: ")


# -- through a Retarget, as the installer and `retarget` use it --------------------------------

def manifest_of(ev: Events, store_dir: bytes) -> Manifest:
    h = nar.NarHasher()
    ev.replay(h, 1 << 20)
    path = PathEntry(NAMES[0], hashes.format_sha256(h.digest()), h.size, [])
    canon = refmap.canonical(store_dir).decode()
    return Manifest(canon, "x86_64-linux", "xz", [path], [], [NAMES[0]],
                    embedded_store_dir=store_dir.decode())


def retargeted(target: retarget.Retarget, ev: Events) -> tuple[bytes, tuple | None]:
    parts: list[bytes] = []
    path = retarget.Retargeted(target, NAMES[0], nar.NarWriter(parts.append))
    ev.replay(path, 65_536)
    return b"".join(parts), path.nar_info()


def test_a_same_length_retarget_uses_the_map_and_gives_the_same_nar(tree) -> None:
    store_dir, ev = tree
    m = manifest_of(ev, store_dir)
    refs = map_of(ev, store_dir, extra=(), names=NAMES[:1])
    refs.nar_hash = hashes.parse_sha256(m.paths[0].nar_hash)
    plain = retargeted(retarget.SameLength(m, "/home/u/n/store"), ev)
    target = retarget.SameLength(m, "/home/u/n/store")
    assert target.use_refs(refmap.RefMap(store_dir, [refs]))
    assert retargeted(target, ev) == plain
    identity = retarget.Identity(m)
    assert not identity.use_refs(refmap.RefMap(store_dir, [refs]))  # nothing to rewrite


def test_a_map_of_another_payload_is_refused(tree) -> None:
    store_dir, ev = tree
    m = manifest_of(ev, store_dir)
    refs = map_of(ev, store_dir, extra=())  # its NAR hash is not the path's
    with pytest.raises(refmap.RefMapError, match="NAR hash differs"):
        retarget.SameLength(m, "/home/u/n/store").use_refs(refmap.RefMap(store_dir, [refs]))
    with pytest.raises(refmap.RefMapError, match="store dir"):
        retarget.SameLength(m, "/home/u/n/store").use_refs(refmap.RefMap(b"/x/store", [refs]))


def test_a_renaming_the_map_did_not_look_for_falls_back_to_the_scan(tree) -> None:
    store_dir, ev = tree
    others = [refmap.PathRefs(n, b"\1" * 32, {}) for n in NAMES[1:]]
    m = refmap.RefMap(store_dir, [map_of(ev, store_dir, extra=())] + others)
    assert m.covers(list(RENAMING)[:3]) and not m.covers(RENAMING)
    assert refmap.RefMap(store_dir, [map_of(ev, store_dir)] + others, [EXTRA]).covers(RENAMING)


# -- the manifest's refMap (format 4), and format 3 still read ---------------------------------

def manifest_doc(version: int, ref_map: object) -> bytes:
    import json

    m = Manifest("/a/store", "x86_64-linux", "xz", [], [], [])
    d = json.loads(m.to_json())
    d["version"] = version
    if ref_map == "absent":
        del d["refMap"]
    else:
        d["refMap"] = ref_map
    return json.dumps(d).encode()


def test_format_3_is_read_without_a_map_and_format_4_names_its_member() -> None:
    assert Manifest.from_json(manifest_doc(3, "absent")).ref_map is None
    entry = {"file": refmap.MEMBER, "size": 10, "sha256": "0" * 64}
    assert Manifest.from_json(manifest_doc(4, entry)).ref_map == entry
    assert b'"version": 4' in Manifest("/a/store", "x86_64-linux", "xz", [], [], []).to_json()


@pytest.mark.parametrize("bad", [{"file": "payload/0000.tar.xz", "size": 1, "sha256": "0" * 64},
                                 {"file": refmap.MEMBER, "size": -1, "sha256": "0" * 64},
                                 {"file": refmap.MEMBER, "size": 1, "sha256": "xyz"}, [], "x"])
def test_a_bad_ref_map_entry_is_refused(bad: object) -> None:
    from nix_prefix.payload.manifest import ManifestError

    with pytest.raises(ManifestError, match="refMap"):
        Manifest.from_json(manifest_doc(4, bad))


# -- the finder: the regular expression's matches, at memory speed ------------------------------

def _regex_of(spellings: list[bytes], runs: bool):
    import re
    ordered = sorted(set(spellings), key=len, reverse=True)
    pattern = b"|".join(re.escape(s) for s in ordered)
    if runs:
        pattern += b"|[" + nix32.ALPHABET.encode() + b"]{32,}"
    return re.compile(pattern)


@pytest.mark.parametrize("runs", [True, False], ids=["runs", "store-dir-only"])
def test_the_finder_finds_what_the_regular_expression_finds(runs: bool) -> None:
    """Random buffers of nix32 characters, slashes, an excluded letter and the store dir
    in several spellings (one starting another, one holding a long run), and the corpus."""
    spellings = [OLD, OLD + b"/p", PADDED, refmap.canonical(PADDED),
                 b"/home/" + b"a" * 40 + b"/store"]
    pieces = [b"/", b"e", b"\0", b"-", OLD, PADDED, spellings[-1], CLOSURE[0], CLOSURE[1][:20],
              b"abc", b"0123456789abcdfghijklmnpqrsvwxyz", b"store", b"//"]
    gen = random.Random(2025)
    buffers = [b"".join(gen.choice(pieces) for _ in range(gen.randrange(0, 60)))
               for _ in range(3000)]
    buffers += list(corpus_files(OLD).values()) + list(corpus_files(PADDED).values())
    finder = refmap.Finder(spellings, runs)
    regex = _regex_of(spellings, runs)
    for buf in buffers:
        got = [(m.start(), m.end(), m.group(0)) for m in finder.finditer(buf)]
        want = [(m.start(), m.end(), m.group(0)) for m in regex.finditer(buf)]
        assert got == want, buf
