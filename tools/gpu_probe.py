"""Probe: training-step throughput of a MiniLM-sized BERT + LoRA r=8 q/v on a GPU, 1..N processes."""
import os, sys, time, json, subprocess
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def worker(steps, precision, fused, seed=0):
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    import lora
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, num_labels=2)
    m = BertForSequenceClassification(cfg)
    lora.add_lora(m, ["query", "value"], rank=8, alpha=16, dropout=0.1, seed=0, keep_trainable=["classifier", "pooler"])
    dev = torch.device("cuda"); m.to(dev).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3, fused=fused)
    g = torch.Generator().manual_seed(seed)
    def batch():
        L = int(torch.randint(30, 90, (1,), generator=g))
        ids = torch.randint(1000, 30000, (32, L), generator=g)
        return dict(input_ids=ids.to(dev), attention_mask=torch.ones_like(ids).to(dev),
                    labels=torch.randint(0, 2, (32,), generator=g).to(dev))
    def step():
        b = batch()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = m(**b).loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        return loss
    for _ in range(20): step()
    torch.cuda.synchronize(); t = time.time()
    for _ in range(steps): l = step()
    l.item(); torch.cuda.synchronize()
    return steps / (time.time() - t)

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "w":
        print(json.dumps(worker(int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1")), flush=True); sys.exit()
    res = {}
    for prec, fused in [("fp32", False), ("fp32", True), ("bf16", True)]:
        res[f"single_{prec}_fused{int(fused)}"] = worker(200, prec, fused)
        print(res, flush=True)
    def multi(n, steps=150):
        t = time.time()
        ps = [subprocess.Popen([sys.executable, __file__, "w", str(steps), "fp32", "1"], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        rates = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in ps]
        return dict(n=n, sum_steps_per_s=round(sum(rates), 1), each=round(sum(rates) / n, 1), wall=round(time.time() - t, 1))
    for n in (4, 8, 16):
        print("multi", multi(n), flush=True)
    mps = subprocess.run("which nvidia-cuda-mps-control", shell=True, capture_output=True, text=True).stdout.strip()
    print("mps binary:", mps or None, flush=True)
    if mps:
        r = subprocess.run("nvidia-cuda-mps-control -d", shell=True, capture_output=True, text=True)
        print("mps start rc", r.returncode, r.stderr[:200], flush=True)
        time.sleep(2)
        for n in (8, 16):
            print("multi+mps", multi(n), flush=True)
