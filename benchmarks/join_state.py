"""Join a state dict saved in parts (the device tool brings back files of at most 16 MB).

python benchmarks/join_state.py OUT.pth PART.a.pth PART.b.pth
"""

import sys

import torch


def main() -> int:
    out, *parts = sys.argv[1:]
    state = {}
    for part in parts:
        state.update(torch.load(part, map_location="cpu", weights_only=True))
    torch.save(state, out)
    print(f"{out}: {len(state)} tensors from {len(parts)} parts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
