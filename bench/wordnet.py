"""WordNet-45: every synset's gloss labelled with its lexicographer file (45 classes), from Debian's
wordnet-base (/usr/share/wordnet/data.{noun,verb,adj,adv}).

    python3 bench/wordnet.py OUT_DIR [--seq-len 48] [--seed 0]

Deterministic 90/10 train/test split by synset (CRC-32 of part of speech and offset), a word-level tokenizer
trained on the training glosses only (lower-cased words and punctuation, words seen at least twice; [PAD] 0,
[UNK] 1, [CLS] 2, [SEP] 3), fixed length with an attention mask. Writes, in bayesq's data format with inputs
(input_ids, attention_mask) as int64:
  wordnet_train.pt, wordnet_calib512.pt, wordnet_calib5000.pt (seeded subsets of train), wordnet_eval.pt (test),
  wordnet_vocab.json.
"""
import argparse
import gzip
import json
import os
import re
import zlib

import torch

WORDNET_DIR = os.environ.get("WORDNET_DIR", "/usr/share/wordnet")
TOKEN = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


def read_synsets():
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = os.path.join(WORDNET_DIR, f"data.{pos}")
        # The GPU carry holds gzipped copies (bench/prepare_gpu_carry.sh); Debian's package has plain files.
        opened = open(path, encoding="latin-1") if os.path.exists(path) else gzip.open(path + ".gz", "rt", encoding="latin-1")
        with opened as f:
            for line in f:
                if line.startswith("  "):
                    continue  # licence header
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                offset, lexfile = fields[0], int(fields[1])
                out.append((pos, offset, lexfile, gloss.strip()))
    return out


def encode(text, vocab, length):
    ids = [2] + [vocab.get(t, 1) for t in TOKEN.findall(text.lower())][: length - 2] + [3]
    mask = [1] * len(ids) + [0] * (length - len(ids))
    return ids + [0] * (length - len(ids)), mask


def tensors(rows, vocab, length):
    ids, masks, labels = [], [], []
    for _, _, label, gloss in rows:
        i, m = encode(gloss, vocab, length)
        ids.append(i)
        masks.append(m)
        labels.append(label)
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(masks, dtype=torch.int64), torch.tensor(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    synsets = read_synsets()
    test = lambda s: zlib.crc32(f"{s[0]}{s[1]}".encode()) % 10 == 0  # noqa: E731
    train_rows = [s for s in synsets if not test(s)]
    test_rows = [s for s in synsets if test(s)]
    counts = {}
    for _, _, _, gloss in train_rows:
        for t in TOKEN.findall(gloss.lower()):
            counts[t] = counts.get(t, 0) + 1
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for word in sorted(w for w, c in counts.items() if c >= 2):
        vocab[word] = len(vocab)
    ids, mask, labels = tensors(train_rows, vocab, args.seq_len)
    torch.save({"inputs": (ids, mask), "labels": labels}, os.path.join(args.out, "wordnet_train.pt"))
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(labels), generator=generator)
    for size in (512, 5000):
        idx = order[:size]
        torch.save({"inputs": (ids[idx].clone(), mask[idx].clone()), "labels": labels[idx].clone()},
                   os.path.join(args.out, f"wordnet_calib{size}.pt"))
    tids, tmask, tlabels = tensors(test_rows, vocab, args.seq_len)
    torch.save({"inputs": (tids, tmask), "labels": tlabels}, os.path.join(args.out, "wordnet_eval.pt"))
    with open(os.path.join(args.out, "wordnet_vocab.json"), "w") as f:
        json.dump({"size": len(vocab), "seq_len": args.seq_len, "classes": 45}, f)
    print(f"wordnet: {len(train_rows)} train, {len(test_rows)} test synsets, vocabulary {len(vocab)}, "
          f"{int(labels.max()) + 1} classes")


if __name__ == "__main__":
    main()
