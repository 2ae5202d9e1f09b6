#!/usr/bin/env python3
"""Build a Spanish text corpus (a few MB) from Spanish documentation shipped by Debian.

No internet is needed beyond a Debian package mirror: the text comes from Debian packages of Spanish man pages and
Spanish manuals, downloaded with `apt-get download` and unpacked with `dpkg-deb -x`. Each package's copyright file is
checked for the licence we expect (all are GPL, so the text may be redistributed with its notice).

    python datasets/spanish/build_corpus.py                        # -> datasets/cache/spanish/*.txt
    python datasets/spanish/build_corpus.py --sample datasets/spanish_sample

Output format (what pretrain.py --corpus reads): UTF-8, one paragraph per line, a blank line between documents.
One man page, one manual chapter (or one section of a single-page manual) = one document. Lines that are mostly code,
option tags, tables, English or other non-Spanish text are dropped; a line seen before anywhere in the corpus is
dropped too (boilerplate, pages shared by several names).

Running it twice gives the same files: downloaded .debs are kept in --work and reused; outputs are rewritten.
Needs: python3 (stdlib only), apt-get and dpkg-deb (Debian/Ubuntu), groff (`apt-get install groff-base`) for man pages.
"""
import argparse
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Source:
    package: str
    kind: str                 # 'man' (roff man pages, rendered with groff) or 'html' (DocBook/Sphinx HTML manuals)
    globs: list               # files inside the unpacked package, sorted; each is one document unless split_tag is set
    licence: str              # the licence, as the package's copyright file names it
    licence_re: str           # a regex that must match the copyright file (so a changed licence stops the build)
    copyright: str            # the main copyright holder(s), as stated in the copyright file (for the README)
    exclude: list = field(default_factory=list)   # file names to leave out
    split_tag: str = ''       # for a single-page manual: start a new document at each such heading (e.g. 'h2')
    in_sample: bool = True    # may documents of this package go into the bundled sample?


DEP5_GPL2 = r'^License:\s*GPL-2(\.0)?\+\s*$'
MANPAGES_L10N = 'the manpages-l10n translators (Dr. Tobias Quathamer, Dr. Helge Kreutzmann and others)'
SOURCES = [
    Source('debian-reference-es', 'html', ['usr/share/debian-reference/*.es.html'], 'GPL-2+', DEP5_GPL2,
           'Osamu Aoki (2007-2013) and the Spanish translators'),
    Source('debian-handbook', 'html', ['usr/share/doc/debian-handbook/html/es-ES/*.html'],
           'GPL-2.0+ or CC-BY-SA-3.0', r'^License:\s*GPL-2\.0\+ or CC-BY-SA-3\.0\s*$',
           'Raphaël Hertzog, Roland Mas (2003-2015), Freexian SARL (2013-2015)'),
    Source('installation-guide-amd64', 'html', ['usr/share/doc/installation-guide-amd64/es/*.html'], 'GPL-2',
           r'licensed under the terms of the GNU GPL, version 2',
           'Bruce Perens, Sven Rudolph, Igor Grobman, James Treacy, Adam Di Carlo, Chris Tillman (1996-2003), '
           'the Debian Installer team (2004-2023) and other contributors'),
    Source('harden-doc', 'html', ['usr/share/doc/harden-doc/html/es-ES/*.html'], 'GPL-2.0 (version 2 or later)',
           r'^License:\s*GPL-2\.0\s*$', 'Javier Fernández-Sanguino Peña (2001-2005), Alexander Reelsen (2000-2001)'),
    Source('maint-guide-es', 'html', ['usr/share/doc/maint-guide-es/html/*.es.html'], 'GPL-2.0+', DEP5_GPL2,
           'Josip Rodin (1998-2002), Osamu Aoki (2005-2017) and the Spanish translators'),
    Source('aptitude-doc-es', 'html', ['usr/share/doc/aptitude/html/es/*.html'], 'GPL-2+', DEP5_GPL2,
           'Daniel Burrows (1999-2011)'),
    Source('debian-edu-doc-es', 'html', ['usr/share/doc/debian-edu-doc-es/debian-edu-bookworm-manual.html'], 'GPL-2+',
           DEP5_GPL2, 'the Debian Edu documentation authors and translators', split_tag='h2'),
    Source('debian-history', 'html', ['usr/share/doc/debian-history/docs/*.es.html'], 'GPL-2+',
           r'GNU General Public License as published by\s+the Free Software Foundation; either version 2',
           'Bdale Garbee (1999-2004), Debian Documentation Team (1999-2019)'),
    Source('ubuntu-packaging-guide-html-es', 'html', ['usr/share/doc/ubuntu-packaging-guide-html-es/*.html'],
           'CC-BY-SA-3.0', r'^License:\s*CC-BY-SA-3\.0\s*$', 'Ubuntu Developers (2010-2017)',
           exclude=['search.html', 'genindex.html'], in_sample=False),
    Source('libreoffice-help-es', 'html', ['usr/share/libreoffice/help/es/text/*/*.html',
                                           'usr/share/libreoffice/help/es/text/*/*/*.html'],
           'MPL-2.0', r'^License:\s*MPL-2\.0\s*$',
           'Oracle and/or its affiliates (2000, 2010), LibreOffice contributors and/or their affiliates',
           in_sample=False),
    # The Spanish translations (manpages-l10n) are GPL-3+; the English originals they translate come from many
    # projects under their own free licences (noted in each page's source), so they stay out of the bundled sample.
    Source('manpages-es', 'man', ['usr/share/man/es/man*/*'], 'GPL-3+', r'^License:\s*GPL-3\+\s*$', MANPAGES_L10N,
           in_sample=False),
    Source('manpages-es-dev', 'man', ['usr/share/man/es/man*/*'], 'GPL-3+', r'^License:\s*GPL-3\+\s*$',
           MANPAGES_L10N, in_sample=False),
]

# Man page sections whose text is not running prose (synopsis, credits, boilerplate about the translation)
SKIP_MAN_SECTIONS = {'SINOPSIS', 'SYNOPSIS', 'TRADUCCIÓN', 'VÉASE TAMBIÉN', 'VEA TAMBIÉN', 'VÉASE TAMBIEN',
                     'SEE ALSO', 'AUTOR', 'AUTORES', 'AUTHOR', 'AUTHORS', 'COLOFÓN', 'COLOPHON', 'COPYRIGHT',
                     'DERECHOS DE AUTOR', 'INFORMAR DE ERRORES', 'REPORTAR ERRORES', 'EJEMPLO', 'EJEMPLOS'}

OUT_FILE_BYTES = 1_000_000   # split a package's text into ~1 MB files (on document boundaries)


# ---------------------------------------------------------------------------------------------------------------
# Is this line Spanish prose?
# ---------------------------------------------------------------------------------------------------------------
ES_WORDS = set('''de la que el en y los se del las un por con no una su para es al lo como más o pero sus le ha me si
sin sobre este ya entre cuando también hasta hay donde desde todo nos durante uno les ni contra otros ese eso ante
ellos esto mí antes algunos qué unos yo otro otras otra él tanto esa estos mucho quienes nada muchos cual poco ella
estar estas algunas algo nosotros cada puede pueden debe usar utiliza usa ser son está están sea será cuál forma
esta dicho mismo tiene tienen hace sólo solo muy bien así según aquí caso archivo fichero sistema'''.split())
EN_WORDS = set('''the of and to in is that for it with as was on be at by this are from or an which have not but
they you has were their will can all if would there been one when more what so its these we may than do should use
used file files must only also such into any other each'''.split())
WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)


def is_spanish_prose(line):
    """A line of running Spanish text: enough words, few code symbols, Spanish function words well above English."""
    words = WORD_RE.findall(line)
    if len(words) < 5 or len(line) < 30:
        return False
    letters = sum(ch.isalpha() or ch.isspace() for ch in line)
    if letters < 0.80 * len(line):                      # code, paths, option lists, tables of numbers
        return False
    tokens = line.split()
    codeish = sum(bool(re.search(r'[{}<>=$_/\\|;]|^--?\w|\(\)$|::', t)) for t in tokens)
    if codeish > 0.2 * len(tokens):
        return False
    lower = [w.lower() for w in words]
    es = sum(w in ES_WORDS for w in lower)
    en = sum(w in EN_WORDS for w in lower)
    if es > 3 * en and es >= 0.15 * len(words):
        return es >= 2 or (en == 0 and line[-1] in '.:!?')   # a short sentence needs only one Spanish word
    return False


def clean_line(line):
    line = unicodedata.normalize('NFC', line)
    line = line.replace('\u00ad', '').replace('\u200b', '').replace('\u00a0', ' ')
    line = re.sub(r'\s+', ' ', line).strip()
    line = re.sub(r'^\[\d+\]\s*', '', line)                          # footnote marks: '[2] También puede...'
    return re.sub(r'^(([A-Z]\.)?\d+(\.\d+)*\.?|[•·*◦‐-])\s+', '', line)   # bullets, numbers: '2.1.', 'B.3.'


# ---------------------------------------------------------------------------------------------------------------
# Man pages: groff renders them with very long lines, so each paragraph comes out as one line
# ---------------------------------------------------------------------------------------------------------------
GROFF = ['groff', '-k', '-t', '-Tutf8', '-man', '-rLL=5000n', '-rHY=0', '-dAD=l', '-P-cbou']


def man_documents(path):
    raw = path.read_bytes()
    if raw[:2] == b'\x1f\x8b':
        raw = gzip.decompress(raw)
    text = raw.decode('utf-8', 'replace')
    if re.match(r'\s*\.so\s', text):                    # an alias page that only includes another one
        return []
    res = subprocess.run(GROFF, input=text.encode('utf-8'), capture_output=True, timeout=120)
    lines = res.stdout.decode('utf-8', 'replace').splitlines()
    title, keep, section, out = '', True, '', []
    for ln in lines[1:-1]:                              # first and last lines are the page header and footer
        if not ln.strip():
            continue
        if not ln.startswith(' '):                      # a section heading: NOMBRE, DESCRIPCIÓN, ...
            section = ln.strip().upper()
            keep = section not in SKIP_MAN_SECTIONS
            continue
        body = ln.strip()
        body = re.sub(r'^\S.{0,40}?\s{3,}(?=\S)', '', body)   # '-c     con -lt: ordena...' -> drop the option tag
        if section in ('NOMBRE', 'NAME'):
            title = title or body
        elif keep:
            out.append(body)
    return [(path.name, [title] + out)] if out else []


# ---------------------------------------------------------------------------------------------------------------
# HTML manuals: one line per paragraph, list item, heading or table cell; code blocks, navigation and tables of
# contents are skipped
# ---------------------------------------------------------------------------------------------------------------
BLOCK_TAGS = {'p', 'div', 'li', 'dt', 'dd', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'td', 'th', 'tr', 'br', 'blockquote',
              'section', 'article', 'table', 'ul', 'ol', 'dl', 'title', 'body', 'hr'}
SKIP_TAGS = {'pre', 'script', 'style', 'head', 'nav', 'aside', 'header', 'footer'}
VOID_TAGS = {'br', 'hr', 'img', 'input', 'meta', 'link', 'base', 'col', 'area', 'wbr'}
SKIP_CLASSES = ('toc', 'navheader', 'navfooter', 'highlight', 'header', 'footer', 'sphinxsidebar', 'related',
                'browse-guide', 'container-tweet', 'screen', 'programlisting', 'synopsis')


class TextBlocks(HTMLParser):
    def __init__(self, split_tag=''):
        super().__init__(convert_charrefs=True)
        self.split_tag, self.docs, self.buf = split_tag, [[]], []
        self.skip_tag, self.skip_depth = None, 0

    def handle_starttag(self, tag, attrs):
        if self.skip_tag:
            self.skip_depth += tag == self.skip_tag
            return
        attrs = dict(attrs)
        cls = attrs.get('class') or ''
        # LibreOffice help writes platform variants ('Herramientas ▸ Opciones' / 'LibreOffice ▸ Preferencias') as
        # hidden spans: keep the default one only
        hidden = 'hidden' in attrs and not (attrs.get('id') or '').startswith('default')
        if tag in SKIP_TAGS or hidden or any(c in cls for c in SKIP_CLASSES):
            if tag not in VOID_TAGS:
                self.skip_tag, self.skip_depth = tag, 1
            return
        if tag in BLOCK_TAGS:
            self.flush()
        if tag == self.split_tag and self.docs[-1]:
            self.docs.append([])

    def handle_endtag(self, tag):
        if self.skip_tag:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in BLOCK_TAGS:
            self.flush()

    def handle_data(self, data):
        if not self.skip_tag:
            self.buf.append(data)

    def flush(self):
        text = ''.join(self.buf).strip()
        self.buf = []
        if text:
            self.docs[-1].append(text)

    def close(self):
        super().close()
        self.flush()


def html_documents(path, split_tag=''):
    parser = TextBlocks(split_tag)
    parser.feed(path.read_text('utf-8', 'replace'))
    parser.close()
    return [(f'{path.name}#{i}' if split_tag else path.name, lines) for i, lines in enumerate(parser.docs) if lines]


# ---------------------------------------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------------------------------------
def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def fetch_package(pkg, work):
    """Download (once) and unpack the package; -> (unpacked root, version, copyright text)."""
    debs = work / 'debs'
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f'{pkg}_*.deb'))
    if not found:
        try:
            run(['apt-get', 'download', pkg], cwd=debs)
        except subprocess.CalledProcessError as e:
            sys.exit(f"apt-get download {pkg} failed ({e.stderr.strip().splitlines()[-1:]}); "
                     "run 'apt-get update' first (as root), on Debian 12 or later")
        found = sorted(debs.glob(f'{pkg}_*.deb'))
    deb = found[-1]
    version = run(['dpkg-deb', '-f', str(deb), 'Version']).stdout.strip()
    root = work / 'unpacked' / pkg
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    run(['dpkg-deb', '-x', str(deb), str(root)])
    copyright_file = root / 'usr/share/doc' / pkg / 'copyright'
    if not copyright_file.exists():                     # e.g. aptitude-doc-es keeps it under its own name too
        copyright_file = next(root.glob('usr/share/doc/*/copyright'))
    return root, version, copyright_file.read_text('utf-8', 'replace')


def source_documents(src, root):
    files = sorted({p for g in src.globs for p in root.glob(g)
                    if p.is_file() and not p.is_symlink() and p.name not in src.exclude})
    docs, seen = [], set()
    for f in files:
        digest = hashlib.sha1(f.read_bytes()).hexdigest()
        if digest in seen:                              # identical pages installed under several names
            continue
        seen.add(digest)
        docs += man_documents(f) if src.kind == 'man' else html_documents(f, src.split_tag)
    return docs


def write_chunks(out, stem, docs):
    """Write documents into stem_00.txt, stem_01.txt, ... of about OUT_FILE_BYTES each; -> the file names."""
    chunks, cur, size = [], [], 0
    for text in docs:
        if cur and size + len(text.encode()) > OUT_FILE_BYTES:
            chunks.append(cur)
            cur, size = [], 0
        cur.append(text)
        size += len(text.encode()) + 1
    if cur:
        chunks.append(cur)
    names = []
    for i, chunk in enumerate(chunks):
        name = f'{stem}_{i:02d}.txt' if len(chunks) > 1 else f'{stem}.txt'
        (out / name).write_text('\n\n'.join(chunk) + '\n', encoding='utf-8')
        names.append(name)
    return names


def pick_sample(docs_by_src, target_bytes):
    """Whole documents for the bundled sample, chosen deterministically by a hash of their names."""
    pool = [(hashlib.sha1(f'{pkg}/{name}'.encode()).hexdigest(), pkg, name, text)
            for pkg, docs in docs_by_src.items() for name, text in docs
            if len(text.encode()) <= target_bytes // 6]     # no single document takes over the sample
    chosen, size = set(), 0
    for _, pkg, name, text in sorted(pool):
        if size + len(text.encode()) > target_bytes:
            continue
        chosen.add((pkg, name))
        size += len(text.encode()) + 2
    return {pkg: [(n, t) for n, t in docs if (pkg, n) in chosen] for pkg, docs in docs_by_src.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, default=ROOT / 'datasets/cache/spanish',
                    help='folder for the corpus .txt files (default: datasets/cache/spanish)')
    ap.add_argument('--work', type=Path, default=ROOT / 'datasets/cache/spanish_build',
                    help='folder for downloaded .debs and unpacked packages, reused between runs')
    ap.add_argument('--sample', type=Path, default=None,
                    help='also write a small sample of whole documents (and the licence notices) to this folder')
    ap.add_argument('--sample-kb', type=int, default=450, help='size of the sample in KB (default 450)')
    args = ap.parse_args()
    if not shutil.which('groff'):
        sys.exit('groff is needed to render the man pages: apt-get install groff-base')
    for tool in ('apt-get', 'dpkg-deb'):
        if not shutil.which(tool):
            sys.exit(f'{tool} is needed (this script runs on Debian or Ubuntu)')

    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob('*.txt'):                  # our own previous output: rewritten below
        old.unlink()
    seen_lines, manifest, docs_by_src, copyrights = set(), [], {}, {}
    totals = {'documents': 0, 'lines': 0, 'bytes': 0}
    print(f"{'package':32} {'version':22} {'licence':28} {'docs':>6} {'lines':>7} {'MB':>6}")
    for src in SOURCES:
        root, version, copyright_text = fetch_package(src.package, args.work)
        if not re.search(src.licence_re, copyright_text, re.M):
            sys.exit(f'{src.package} {version}: its copyright file no longer matches {src.licence_re!r} '
                     f'({src.licence}); check the licence before using it')
        copyrights[src.package] = copyright_text
        docs = []
        for name, raw_lines in source_documents(src, root):
            lines = []
            for ln in raw_lines:
                ln = clean_line(ln)
                key = ln.lower()
                if is_spanish_prose(ln) and key not in seen_lines:
                    seen_lines.add(key)
                    lines.append(ln)
            if len(lines) >= 2:                         # a title alone, or one stray line, is no document
                docs.append((name, '\n'.join(lines)))
        docs_by_src[src.package] = docs
        files = write_chunks(args.out, src.package, [t for _, t in docs])
        n_lines = sum(t.count('\n') + 1 for _, t in docs)
        n_bytes = sum(len(t.encode()) for _, t in docs)
        totals['documents'] += len(docs); totals['lines'] += n_lines; totals['bytes'] += n_bytes
        manifest.append({'package': src.package, 'version': version, 'licence': src.licence,
                         'copyright': src.copyright, 'documents': len(docs), 'lines': n_lines, 'bytes': n_bytes,
                         'files': files})
        print(f'{src.package:32} {version:22} {src.licence:28} {len(docs):6d} {n_lines:7d} {n_bytes / 1e6:6.2f}')
    print(f"{'total':84} {totals['documents']:6d} {totals['lines']:7d} {totals['bytes'] / 1e6:6.2f}")
    (args.out / 'MANIFEST.json').write_text(json.dumps({'sources': manifest, 'totals': totals}, indent=1,
                                                       ensure_ascii=False) + '\n', encoding='utf-8')
    licences = args.out / 'copyright'
    licences.mkdir(exist_ok=True)
    for pkg, text in copyrights.items():
        (licences / pkg).write_text(text, encoding='utf-8')
    print(f'wrote {args.out}')

    if args.sample:
        sample_src = {s.package: docs_by_src[s.package] for s in SOURCES if s.in_sample}
        picked = pick_sample(sample_src, args.sample_kb * 1000)
        args.sample.mkdir(parents=True, exist_ok=True)
        for old in args.sample.glob('*.txt'):
            old.unlink()
        (args.sample / 'copyright').mkdir(exist_ok=True)
        for old in (args.sample / 'copyright').glob('*'):
            old.unlink()
        n_docs = n_lines = n_bytes = 0
        for pkg, docs in picked.items():
            if not docs:
                continue
            text = '\n\n'.join(t for _, t in docs) + '\n'
            (args.sample / f'{pkg}.txt').write_text(text, encoding='utf-8')
            (args.sample / 'copyright' / pkg).write_text(copyrights[pkg], encoding='utf-8')
            n_docs += len(docs); n_lines += sum(t.count('\n') + 1 for _, t in docs); n_bytes += len(text.encode())
            print(f'sample {pkg:32} {len(docs):4d} documents  {len(text.encode()) / 1e3:7.1f} KB')
        gpl2 = Path('/usr/share/common-licenses/GPL-2')
        if gpl2.exists():
            shutil.copyfile(gpl2, args.sample / 'copyright' / 'GPL-2')
        print(f'sample total: {n_docs} documents, {n_lines} lines, {n_bytes / 1e3:.1f} KB in {args.sample}')


if __name__ == '__main__':
    main()
