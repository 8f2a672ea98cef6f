"""ViT-B/16 at 224 px (1000 classes) next to Hugging Face ``ViTForImageClassification``.

``python -m benchmarks.vit [--batch-size B] [--smoke] [--out vit.json]``; on a GPU also timm's
``vit_base_patch16_224`` (when timm is installed). All sides: 12 pre-LN layers, d=768, 12
heads, exact GELU, class-token head, no dropout, softmax cross entropy on random labels.
Throughput is in images/s; FLOPs count the 197 tokens of each image.
"""

from __future__ import annotations

from benchmarks import cases, cli, env, runner

SMOKE = dict(image_size=32, patch_size=8, d_model=64, num_heads=4, num_layers=1, mlp_dim=128,
             num_classes=10)


def case(args) -> cases.Case:
  import zoo

  preset = "vit-b16"
  overrides = dict(SMOKE) if args.smoke else {}
  cfg = zoo.get_config(preset, **overrides, **cases.zoo_overrides(args))
  b = args.batch_size or (2 if args.smoke else 128 if env.on_gpu() else 2)
  r = cases.rng()
  images = r.randn(b, cfg.image_size, cfg.image_size, cfg.num_channels).astype("float32")
  labels = r.randint(0, cfg.num_classes, (b,)).astype("int32")
  pixels = images.transpose(0, 3, 1, 2).copy()  # PyTorch is channels-first
  tokens = cfg.num_tokens
  batch = {"images": images, "labels": labels}

  def zoo_work():
    return cases.ZooWork(cfg, "image_classification", batch)

  def hf_work():
    import transformers

    from zoo.pretrained import vit

    hf_cfg = transformers.ViTConfig(**vit.config_to_hf(cfg))
    model_hf = transformers.ViTForImageClassification(hf_cfg)
    return cases.TorchWork(
        model_hf, {"pixel_values": pixels, "labels": labels}, {"pixel_values": pixels}
    )

  def timm_work():
    import timm
    import torch.nn.functional as F

    model_timm = timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=cfg.num_classes,
        img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.d_model,
        depth=cfg.num_layers, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_dim / cfg.d_model,
    )
    return cases.TorchWork(
        model_timm, {"x": pixels, "labels": labels}, {"x": pixels},
        loss=lambda m, inputs: F.cross_entropy(m(inputs["x"]), inputs["labels"]),
    )

  return cases.Case(
      model=preset + (" (smoke)" if args.smoke else ""),
      shape=f"B={b} {cfg.image_size}px ({tokens} tokens/image)",
      unit="images",
      units=b,
      flops=cases.zoo_flops(cfg, batch),
      zoo=zoo_work,
      peers={"hf": hf_work, "timm": timm_work},
  )


def main(argv: list[str] | None = None) -> dict:
  args = cli.parse(cli.parser(__doc__.splitlines()[0]), argv)
  report_case = case(args)
  return runner.run("ViT-B/16 (vit-b16)", [report_case], args)


if __name__ == "__main__":
  main()
