"""I-JEPA in a training loop of your own, from imagejepa's pieces, then a linear probe.

    python examples/custom_loop.py IMAGE_FOLDER [--steps 40]

IMAGE_FOLDER holds one subfolder of images per class (torchvision's ImageFolder layout).
Pretraining ignores the labels; the linear probe at the end uses them.
"""

import argparse

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import imagejepa

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("folder")
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--size", type=int, default=32, help="image side in pixels")
args = parser.parse_args()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)

# Random crops to pretrain on (labels unused), the whole image to probe.
normalize = transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
crops = transforms.Compose([transforms.RandomResizedCrop(args.size, scale=(0.3, 1.0)),
                            transforms.ToTensor(), normalize])
whole = transforms.Compose([transforms.Resize((args.size, args.size)), transforms.ToTensor(), normalize])
loader = DataLoader(datasets.ImageFolder(args.folder, crops), batch_size=32, shuffle=True, drop_last=True)

# A small ViT (patches of 4 pixels: an 8 x 8 grid at 32 x 32) and its predictor; IJEPA adds
# the target encoder (an EMA copy of the encoder) and computes the loss.
encoder = imagejepa.Encoder("vit_tiny", patch_size=4, img_size=args.size, embed_dim=96, depth=3, num_heads=3)
predictor = imagejepa.Predictor(encoder.embed_dim, encoder.grid, pred_dim=64, depth=2, num_heads=4)
model = imagejepa.IJEPA(encoder, predictor).to(device)
sampler = imagejepa.MultiBlockMaskSampler(encoder.grid)  # one context block, 4 target blocks
generator = torch.Generator().manual_seed(0)  # the masks are a function of this generator
optimizer = torch.optim.AdamW(imagejepa.param_groups(model.encoder, model.predictor))

step = 0
while step < args.steps:
    for images, _ in loader:
        lr = imagejepa.warmup_cosine(step, args.steps // 10, args.steps, start=1e-4, peak=1e-3, final=1e-5)
        weight_decay = imagejepa.cosine_increase(step, args.steps, start=0.04, final=0.4)
        for group in optimizer.param_groups:  # biases and norm parameters are not decayed
            group["lr"] = lr
            group["weight_decay"] = weight_decay if group["apply_weight_decay"] else 0.0
        masks = sampler(len(images), generator).to(device)
        loss, metrics = model(images.to(device), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        momentum = 0.996 + (1.0 - 0.996) * step / args.steps  # the target follows ever more slowly
        imagejepa.ema_update(model.target_encoder, model.encoder, momentum)
        if step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}  target std {metrics['target_std'].item():.3f}")
        step += 1
        if step == args.steps:
            break

# The target encoder's mean-pooled patch tokens, frozen; a linear probe on 3/4, scored on 1/4.
model.eval()
with torch.no_grad():
    batches = [(model.target_encoder.embed(x.to(device)).cpu(), y)
               for x, y in DataLoader(datasets.ImageFolder(args.folder, whole), batch_size=256)]
features, labels = torch.cat([f for f, _ in batches]), torch.cat([y for _, y in batches])
order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
train, test = order[: len(order) * 3 // 4], order[len(order) * 3 // 4:]
result = imagejepa.linear_probe(features[train], labels[train], features[test], labels[test])
print(f"linear probe top-1: {100 * result['top1']:.1f}% on {len(test)} held-out images")
