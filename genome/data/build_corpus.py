"""Rebuild Loopy's embedded corpus from Debian packages of public-domain books.

The embedded corpus is what makes `--dataset embedded` work offline: Jane
Austen's six novels (Debian `r-cran-janeaustenr`, R lazy-load data read with
the PyPI package `rdata`) and the World English Bible (Debian
`sword-text-web`, a SWORD zText module whose OSIS markup we strip here).
One document per chapter. About 5% of the documents go to validation, chosen
by a hash of the document name so that the split never depends on order.

    python genome/data/build_corpus.py            # apt-get download into a temp dir
    python genome/data/build_corpus.py --debs D   # use .deb files already in D

Nothing is installed system-wide: packages are fetched with `apt-get
download` and unpacked with `dpkg-deb -x` into a temporary directory.
Outputs (next to this script unless --out is given): embedded-train.jsonl.xz,
embedded-val.jsonl.xz (one {"name", "text"} object per line), SHA256SUMS and
LICENSE.md. The output is deterministic for the same package versions.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import lzma
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

PACKAGES = ("r-cran-janeaustenr", "sword-text-web")
AUSTEN_DATA = "usr/lib/R/site-library/janeaustenr/data"
AUSTEN_BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma",
                "northangerabbey", "persuasion")
WEB_MODULE = "usr/share/sword/modules/texts/ztext/engWEB2015eb"
VAL_PERCENT = 5  # share of documents (by name hash) that go to validation
XZ_PRESET = 6
OUTPUT_FILES = ("embedded-train.jsonl.xz", "embedded-val.jsonl.xz")


# --- Debian packages --------------------------------------------------------

def fetch_packages(work: Path, debs_dir: Path | None) -> dict[str, Path]:
    """Return {package: .deb path}, downloading with apt-get unless given."""
    if debs_dir is None:
        work.chmod(0o755)  # apt-get downloads as user _apt when it can
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=work, check=True)
        debs_dir = work
    found = {}
    for package in PACKAGES:
        matches = sorted(debs_dir.glob(f"{package}_*.deb"))
        if not matches:
            sys.exit(f"no {package}_*.deb in {debs_dir}")
        found[package] = matches[-1]
    return found


def deb_field(deb: Path, field: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), field], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def unpack(deb: Path, root: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)


# --- Jane Austen (R lazy-load database) -----------------------------------

def read_lazyload(data_dir: Path) -> dict[str, list[str]]:
    """Read every character vector from an R package's Rdata.rdb/.rdx.

    The .rdx index (an RDS file) maps variable names to (offset, length) in
    the .rdb; each chunk there is a 4-byte big-endian length followed by a
    zlib stream holding one serialized R object.
    """
    import rdata  # build-time dependency only

    index = rdata.read_rds(str(data_dir / "Rdata.rdx"))
    blob = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[int(offset):int(offset) + int(length)]
        raw = zlib.decompress(chunk[4:])
        if struct.unpack(">I", chunk[:4])[0] != len(raw):
            raise ValueError(f"bad chunk length for {name}")
        parsed = rdata.parser.parse_data(raw, extension=".rds")
        out[str(name)] = [str(line) for line in rdata.conversion.convert(parsed)]
    return out


CHAPTER_LINE = re.compile(r"^(CHAPTER|Chapter) ([0-9]+|[IVXLC]+)$")
VOLUME_LINE = re.compile(r"^VOLUME [IVX]+$")


def paragraphs(lines: list[str]) -> list[str]:
    """Reflow hard-wrapped lines into paragraphs (blank lines separate)."""
    paras, current = [], []
    for line in lines:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            paras.append(re.sub(" {2,}", " ", " ".join(current)))
            current = []
    if current:
        paras.append(re.sub(" {2,}", " ", " ".join(current)))
    return paras


def austen_documents(root: Path) -> list[tuple[str, str]]:
    docs = []
    for book, lines in sorted(read_lazyload(root / AUSTEN_DATA).items()):
        if book not in AUSTEN_BOOKS:
            raise ValueError(f"unexpected dataset {book!r} in janeaustenr")
        chapters: list[list[str]] = []
        pending: list[str] = []  # front matter / volume headings go to the next chapter
        for para in paragraphs(lines):
            if CHAPTER_LINE.match(para):
                chapters.append(pending + [para])
                pending = []
            elif VOLUME_LINE.match(para) or not chapters:
                pending.append(para)
            else:
                chapters[-1].append(para)
        if pending:
            chapters[-1].extend(pending)
        for number, chapter in enumerate(chapters, 1):
            docs.append((f"austen/{book}/{number:03d}", "\n\n".join(chapter) + "\n"))
    return docs


# --- World English Bible (SWORD zText, OSIS markup) ------------------------

def read_ztext(module: Path) -> str:
    """Concatenate a zText module's entries in versification order.

    .bzs: blocks (offset, compressed size, size), uint32 LE each;
    .bzv: entries (block, offset in block, size), uint32/uint32/uint16 LE;
    .bzz: the zlib-compressed blocks. Linked verses repeat an entry: skip.
    """
    parts = []
    for testament in ("ot", "nt"):
        bzs = (module / f"{testament}.bzs").read_bytes()
        bzv = (module / f"{testament}.bzv").read_bytes()
        bzz = (module / f"{testament}.bzz").read_bytes()
        blocks = []
        for at in range(0, len(bzs), 12):
            offset, csize, size = struct.unpack_from("<III", bzs, at)
            data = zlib.decompress(bzz[offset:offset + csize])
            if len(data) != size:
                raise ValueError(f"{testament}: block size mismatch")
            blocks.append(data)
        seen = set()
        for at in range(0, len(bzv), 10):
            entry = struct.unpack_from("<IIH", bzv, at)
            block, offset, size = entry
            if size == 0 or entry in seen:
                continue
            seen.add(entry)
            parts.append(blocks[block][offset:offset + size].decode("utf-8"))
            parts.append(" ")
    return "".join(parts)


TAG_OR_TEXT = re.compile(r"<[^>]*>|[^<]+")
ATTR = re.compile(r'([A-Za-z]+)="([^"]*)"')
PARA, LINE, GAP = "\x00P", "\x00L", "\x00G"  # markers resolved by tidy()


def tidy(raw: str) -> str:
    """Collapse whitespace; PARA -> blank line, LINE -> newline.

    GAP marks a removed footnote: a space between words, nothing next to
    punctuation or quotes ("God<note/>created" -> "God created").
    """
    raw = re.sub(r"\s+", " ", raw)
    raw = re.sub(f" ?(?:{GAP} ?)+", GAP, raw)
    raw = re.sub(GAP + r"(?=[,.;:!?\u201d\u2019)\]])|(?<=[\u201c\u2018(\[])" + GAP, "", raw)
    raw = raw.replace(GAP, " ")
    raw = raw.replace(PARA, "\n\n").replace(LINE, "\n")
    lines = [line.strip() for line in raw.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def web_documents(root: Path) -> list[tuple[str, str]]:
    """Split the Bible into chapters of plain text.

    Footnotes and cross references are dropped; titles, poetry lines and
    paragraphs become line breaks. Front matter and the glossary (text
    outside any book) become documents of their own; a book's titles are
    prefixed to its first chapter.
    """
    stream = read_ztext(root / WEB_MODULE)
    docs: list[tuple[str, str]] = []
    outside: list[str] = []       # text outside a chapter
    outside_name = "web/preface"  # what that text is, if it stands alone
    chapter: list[str] | None = None
    chapter_id = ""
    book_name = ""
    note_depth = 0

    def flush_outside():
        text = tidy("".join(outside))
        if len(text) > 200:
            docs.append((outside_name, text + "\n"))
        outside.clear()

    for match in TAG_OR_TEXT.finditer(stream):
        token = match.group(0)
        if not token.startswith("<"):
            if note_depth == 0:
                (chapter if chapter is not None else outside).append(html.unescape(token))
            continue
        closing = token.startswith("</")
        name = re.match(r"</?([A-Za-z]+)", token)
        if name is None:
            continue
        tag = name.group(1)
        attrs = dict(ATTR.findall(token))
        selfclosing = token.endswith("/>")
        if tag == "note":
            if not selfclosing:
                note_depth += -1 if closing else 1
            if note_depth == 0:
                (chapter if chapter is not None else outside).append(GAP)
            continue
        if note_depth:
            continue
        sink = chapter if chapter is not None else outside
        if tag == "chapter" and "sID" in attrs:
            chapter_id = attrs.get("osisID", attrs["sID"])
            heading = f"{book_name} {attrs.get('n', '')}".strip()
            prefix = tidy("".join(outside))
            outside.clear()
            chapter = [prefix, PARA, heading, PARA] if prefix else [heading, PARA]
        elif tag == "chapter" and "eID" in attrs and chapter is not None:
            docs.append((f"web/{chapter_id}", tidy("".join(chapter)) + "\n"))
            chapter = None
        elif tag == "div" and attrs.get("type") == "book" and "sID" in attrs:
            flush_outside()
            outside_name = f"web/{attrs.get('osisID', 'book')}.intro"
        elif tag == "div" and attrs.get("type") in ("front", "glossary") and "sID" in attrs:
            flush_outside()
            outside_name = "web/preface" if attrs["type"] == "front" else "web/glossary"
        elif tag == "milestone" and attrs.get("type") == "x-usfm-h":
            book_name = attrs.get("n", book_name)
        elif tag in ("title", "speaker", "list", "lg") or (
                tag == "div" and attrs.get("type") in ("x-p", "introduction")) or (
                tag == "lb" and attrs.get("type") == "x-p"):
            sink.append(PARA)
        elif (tag == "l" and "sID" in attrs) or (tag == "item" and not closing):
            sink.append(LINE)
        # every other tag (w, q, seg, name, milestones, ...) only wraps text
    if chapter is not None:
        raise ValueError(f"unterminated chapter {chapter_id}")
    flush_outside()
    return docs


# --- split and write --------------------------------------------------------

def is_validation(name: str) -> bool:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < VAL_PERCENT


def write_jsonl_xz(path: Path, docs: list[tuple[str, str]]) -> None:
    payload = "".join(json.dumps({"name": n, "text": t}, ensure_ascii=False) + "\n"
                      for n, t in docs).encode("utf-8")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(lzma.compress(payload, format=lzma.FORMAT_XZ,
                                  check=lzma.CHECK_CRC64, preset=XZ_PRESET))
    os.replace(tmp, path)


LICENSE_TEMPLATE = """\
# Embedded corpus: sources and licence

`embedded-train.jsonl.xz` and `embedded-val.jsonl.xz` hold public-domain
books, one JSON object per line (`{{"name": ..., "text": ...}}`), one
document per chapter. They are rebuilt, byte for byte, by
`python genome/data/build_corpus.py` from these Debian packages:

| package | version | content |
| --- | --- | --- |
| r-cran-janeaustenr | {austen_version} | Jane Austen's six completed novels |
| sword-text-web | {web_version} | World English Bible with Deuterocanon (SWORD engWEB2015eb) |

The novels: Sense and Sensibility (1811), Pride and Prejudice (1813),
Mansfield Park (1814), Emma (1815), Northanger Abbey and Persuasion (both
December 1817, dated 1818).

## Public-domain status

- **Jane Austen** (1775-1817): the novels were published between 1811 and
  1818 and are in the public domain worldwide. The texts come from Project
  Gutenberg via the R package janeaustenr by Julia Silge (package code MIT;
  the novels themselves carry no copyright).
- **World English Bible**: "The World English Bible is in the Public Domain.
  That means that it is not copyrighted. However, 'World English Bible' is a
  Trademark of eBible.org. [...] All we ask is that if you CHANGE the actual
  text of the World English Bible in any way, you not call the result the
  World English Bible any more." (Debian copyright file of sword-text-web).
  We removed footnotes, cross references and markup, so this corpus is a
  *derivative of* the World English Bible, not the World English Bible.

## Processing

- Austen: hard-wrapped lines reflowed into paragraphs; split at chapter
  headings (front matter and volume headings go with the next chapter).
- Bible: OSIS markup stripped; footnotes and cross references removed;
  titles, paragraphs and poetry lines kept as line breaks; one document per
  chapter, plus the preface and the glossary.
- Split: a document goes to validation when the first 8 bytes of
  sha256(name), as a big-endian integer, modulo 100 are below {val_percent}.
- Compression: xz, preset {xz_preset}.

## Contents

| split | documents | characters | UTF-8 bytes |
| --- | --- | --- | --- |
| train | {train_docs} | {train_chars} | {train_bytes} |
| val | {val_docs} | {val_chars} | {val_bytes} |
"""


def build(out: Path, debs_dir: Path | None) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loopy-corpus-") as tmp:
        work = Path(tmp)
        debs = fetch_packages(work, debs_dir)
        root = work / "root"
        for deb in debs.values():
            unpack(deb, root)
        versions = {p: deb_field(d, "Version") for p, d in debs.items()}
        docs = austen_documents(root) + web_documents(root)
    names = [n for n, _ in docs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate document names")
    train = [d for d in docs if not is_validation(d[0])]
    val = [d for d in docs if is_validation(d[0])]
    write_jsonl_xz(out / OUTPUT_FILES[0], train)
    write_jsonl_xz(out / OUTPUT_FILES[1], val)
    sums = "".join(f"{hashlib.sha256((out / f).read_bytes()).hexdigest()}  {f}\n"
                   for f in OUTPUT_FILES)
    (out / "SHA256SUMS").write_text(sums)
    stats = {
        "train_docs": len(train), "val_docs": len(val),
        "train_chars": sum(len(t) for _, t in train),
        "val_chars": sum(len(t) for _, t in val),
        "train_bytes": sum(len(t.encode()) for _, t in train),
        "val_bytes": sum(len(t.encode()) for _, t in val),
    }
    (out / "LICENSE.md").write_text(LICENSE_TEMPLATE.format(
        austen_version=versions["r-cran-janeaustenr"],
        web_version=versions["sword-text-web"],
        val_percent=VAL_PERCENT, xz_preset=XZ_PRESET, **stats))
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output directory (default: this script's directory)")
    parser.add_argument("--debs", type=Path, default=None,
                        help="directory with the .deb files (default: apt-get download)")
    args = parser.parse_args(argv)
    stats = build(args.out, args.debs)
    for f in OUTPUT_FILES:
        print(f"{f}: {(args.out / f).stat().st_size} bytes")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
