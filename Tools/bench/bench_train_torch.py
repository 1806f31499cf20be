"""The baseline of `arcflow train-bench` on the transformer-block example: one training step
(forward + backward + clip_grad_norm_ + AdamW) in PyTorch eager f32, against its forward alone
(no autograd), alternating, on a fixed number of threads. Run by hand:

    /root/torchenv/bin/python Tools/bench/bench_train_torch.py --threads 2 [--tokens 1024 --width 768 --heads 12]

The block is the one `arcflow example transformer-block --loss` prints: LayerNorm (eps 1e-6) →
Q/K/V → per-head RMSNorm on Q and K → attention → output projection → residual; LayerNorm → MLP with
tanh-GELU → residual; loss = mean((y - target)^2).
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(self, width, heads, ratio=4):
        super().__init__()
        self.heads, self.dh = heads, width // heads
        self.norm1 = torch.nn.LayerNorm(width, eps=1e-6)
        self.to_q, self.to_k, self.to_v, self.to_out = (torch.nn.Linear(width, width) for _ in range(4))
        self.norm_q = torch.nn.RMSNorm(self.dh, eps=1e-6)
        self.norm_k = torch.nn.RMSNorm(self.dh, eps=1e-6)
        self.norm2 = torch.nn.LayerNorm(width, eps=1e-6)
        self.fc1, self.fc2 = torch.nn.Linear(width, ratio * width), torch.nn.Linear(ratio * width, width)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        split = lambda v: v.view(b, t, self.heads, self.dh).transpose(1, 2)
        q, k, v = self.norm_q(split(self.to_q(h))), self.norm_k(split(self.to_k(h))), split(self.to_v(h))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x1 = x + self.to_out(a)
        return x1 + self.fc2(F.gelu(self.fc1(self.norm2(x1)), approximate="tanh"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Block(args.width, args.heads)
    x = torch.randn(1, args.tokens, args.width)
    target = torch.randn(1, args.tokens, args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)

    def forward():
        with torch.no_grad():
            return F.mse_loss(model(x), target)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    tf, ts = [], []
    for k in range(1 + args.runs):
        a = time.perf_counter(); forward(); b = time.perf_counter()
        c = time.perf_counter(); step(); d = time.perf_counter()
        if k >= 1:
            tf.append(b - a); ts.append(d - c)
    mf, ms = statistics.median(tf), statistics.median(ts)
    print(f"torch {torch.__version__} eager f32, {args.threads} threads, tokens {args.tokens}, width {args.width}")
    print(f"  forward   : median {mf * 1e3:9.3f} ms  (min {min(tf) * 1e3:.3f})")
    print(f"  train step: median {ms * 1e3:9.3f} ms  (min {min(ts) * 1e3:.3f})  (forward + backward + clip + AdamW)")
    print(f"  step / forward: {ms / mf:.2f}x")


if __name__ == "__main__":
    main()
