"""Run under torchrun by test_distributed.py: train, then check every rank holds the same weights."""
import json
import sys

import torch
import torch.distributed as dist

from genfast.training import TrainSettings, train

model, out_dir, result = sys.argv[1], sys.argv[2], sys.argv[3]
summary = train(TrainSettings(model=model, steps=3, batch_size=16, out_dir=out_dir, save_every=3, sample_every=3,
                              sample_images=4, progress=False, device="cpu"), log=lambda s: None)
flat = torch.cat([p.detach().flatten() for net in summary["networks"].values() for p in net.parameters()])
gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
if dist.get_rank() == 0:
    same = all(torch.equal(gathered[0], g) for g in gathered[1:])
    with open(result, "w") as f:
        json.dump({"world": dist.get_world_size(), "same": same, "step": summary["step"]}, f)
# no teardown here: genfast.distributed.context() registered it to run at exit (the path under test)
