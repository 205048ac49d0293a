#!/usr/bin/env python3
"""Check the links of README.md and doc/*.md: every relative link must name a
file of the repository, and every #anchor a heading of the file it points to
(GitHub's rule: lower case, punctuation dropped, spaces to hyphens, -1, -2 ...
for repeats).  Links inside code (fenced blocks, `inline`) are not links.

Usage: python3 scripts/check-doc-links.py [file.md ...]
Prints each broken link as file:line: target, and exits 1 if there is one.
Not part of scripts/test.sh.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r'!?\[(?:[^\]\\]|\\.)*\]\(([^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+"[^"]*")?\)')
FENCE = re.compile(r'^\s*(```|~~~)')
HEADING = re.compile(r'^#{1,6}\s+(.*?)\s*#*\s*$')


def prose(text):
    """The text with fenced code blanked out and inline code removed, so that
    line numbers stay and a link may span lines."""
    out, fence = [], None
    for line in text.split('\n'):
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1) == fence:
                fence = None
            out.append('')
        elif fence is not None:
            out.append('')
        else:
            out.append(re.sub(r'(`+).*?\1', '', line))
    return '\n'.join(out)


def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r'[^\w\- ]', '', s)  # keeps letters, digits, _, -, space
    return s.replace(' ', '-')


def anchors(path, cache={}):
    if path not in cache:
        seen, out = {}, set()
        fence = None
        for line in path.read_text(encoding='utf-8').split('\n'):
            m = FENCE.match(line)
            if m:
                fence = m.group(1) if fence is None else (None if m.group(1) == fence else fence)
                continue
            h = HEADING.match(line) if fence is None else None
            if h:
                base = slug(h.group(1))
                k = seen.get(base, 0)
                seen[base] = k + 1
                out.add(base if k == 0 else f'{base}-{k}')
        cache[path] = out
    return cache[path]


def check(md):
    """(line, target, problem) for each broken link of md, and how many links it has."""
    bad, text = [], prose(md.read_text(encoding='utf-8'))
    links = list(LINK.finditer(text))
    for m in links:
        target = m.group(1)
        if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
            continue
        line = text.count('\n', 0, m.start()) + 1
        path, _, anchor = target.partition('#')
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append((line, target, 'no such file'))
        elif anchor:
            if dest.suffix != '.md':
                bad.append((line, target, 'anchor into a file that is not markdown'))
            elif anchor not in anchors(dest):
                bad.append((line, target, 'no such heading'))
    return bad, len(links)


def main(argv):
    files = [Path(a).resolve() for a in argv] or [ROOT / 'README.md', *sorted((ROOT / 'doc').glob('*.md'))]
    links = broken = 0
    for md in files:
        bad, n = check(md)
        links += n
        for line, target, why in bad:
            name = md.relative_to(ROOT) if md.is_relative_to(ROOT) else md
            print(f'{name}:{line}: {target}: {why}')
            broken += 1
    print(f'{len(files)} files, {links} links, {broken} broken')
    return 1 if broken else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
