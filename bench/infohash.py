#!/usr/bin/env python3
"""Prints the BitTorrent info hash (hex) of a .torrent file: SHA-1 of the bencoded info dict."""
import hashlib
import sys


def skip(data, i):
    c = data[i:i + 1]
    if c == b"i":
        return data.index(b"e", i) + 1
    if c in (b"l", b"d"):
        i += 1
        while data[i:i + 1] != b"e":
            i = skip(data, i)
        return i + 1
    colon = data.index(b":", i)
    return colon + 1 + int(data[i:colon])


def info_hash(data):
    assert data[:1] == b"d"
    i = 1
    while data[i:i + 1] != b"e":
        key_end = skip(data, i)
        key = data[data.index(b":", i) + 1:key_end]
        value_end = skip(data, key_end)
        if key == b"info":
            return hashlib.sha1(data[key_end:value_end]).hexdigest()
        i = value_end
    raise SystemExit("no info dict")


if __name__ == "__main__":
    print(info_hash(open(sys.argv[1], "rb").read()))
