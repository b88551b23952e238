"""Trains the BERT-base-shaped benchmark model on WordNet-45 (GPU) and saves it traced.

    python3 bench/train_bert.py DATA_DIR OUT.pt [--epochs 3] [--seed 0]

Hugging Face BertForSequenceClassification from a config (12 layers, hidden 768, 12 heads, intermediate 3072,
random init), eager attention (double backward through fused attention kernels is not implemented, and
bayesq's Hutchinson curvature needs it). AdamW 1e-4, 10% warm-up then linear decay, batch 128, bf16 autocast.
Deterministic algorithms (cuBLAS workspace fixed), so that a fresh GPU machine of the same kind should retrain the
same weights. The traced module takes (input_ids, attention_mask) and returns the logits; it is traced with
gradients enabled (so the graph holds plain aten::linear, not fused inference operators) on the GPU it will run on.
"""
import argparse
import json
import os
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: deterministic cuBLAS

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification


class Logits(nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    # Without this, atomic adds in the embedding backward make every training differ in the last bits and the
    # benchmark rows of two GPU machines come from different models. warn_only: an op with no deterministic
    # kernel warns instead of stopping the training.
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device("cuda")
    with open(os.path.join(args.data, "wordnet_vocab.json")) as f:
        vocab = json.load(f)
    train = torch.load(os.path.join(args.data, "wordnet_train.pt"))
    test = torch.load(os.path.join(args.data, "wordnet_eval.pt"))
    ids, mask = (t.to(device) for t in train["inputs"])
    labels = train["labels"].to(device)
    config = BertConfig(vocab_size=vocab["size"], hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=vocab["seq_len"], num_labels=45,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    config._attn_implementation = "eager"
    model = BertForSequenceClassification(config).to(device)
    batch = 128
    steps = args.epochs * (len(labels) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    warmup = steps // 10
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / max(1, steps - warmup)))
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(labels), generator=generator).to(device)
        for i in range(len(labels) // batch):
            idx = order[i * batch:(i + 1) * batch]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(input_ids=ids[idx], attention_mask=mask[idx]).logits
                loss = F.cross_entropy(logits.float(), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    train_seconds = time.time() - start
    model.eval()
    wrapper = Logits(model).eval()
    tids, tmask = (t.to(device) for t in test["inputs"])
    tlabels = test["labels"].to(device)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(tlabels), 512):
            correct += (wrapper(tids[i:i + 512], tmask[i:i + 512]).argmax(1) == tlabels[i:i + 512]).sum().item()
    accuracy = correct / len(tlabels)
    traced = torch.jit.trace(wrapper, (tids[:2], tmask[:2]), check_trace=False)
    traced.save(args.out)
    info = {"arch": "bert-base", "epochs": args.epochs, "seed": args.seed, "test_top1": accuracy,
            "train_seconds": train_seconds, "deterministic": True, "torch": torch.__version__,
            "parameters": sum(p.numel() for p in model.parameters())}
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(info, f)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
