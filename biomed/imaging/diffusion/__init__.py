"""Text-to-chest-X-ray latent diffusion in the manner of RoentGen (Stable Diffusion's layout).

- `biomed.imaging.diffusion.components`: the components (VAE, UNet, tokenizer, schedulers),
  built from a config or loaded from a local Stable Diffusion folder; the pixel boundary.
- `biomed.imaging.diffusion.text_encoders`: ``clip`` | ``pubmed_lm`` | ``minilm``.
- `biomed.imaging.diffusion.pipeline`: the saved ``pipeline/`` folder: write, find, and
  ``load_pipeline`` (the loader for inference: no training code, no Hydra).
- `biomed.imaging.diffusion.card`: the folder's model card.
- `biomed.imaging.diffusion.objective`: the trained module and its denoising loss, EMA.
- `biomed.imaging.diffusion.latents`: the caches of VAE latents and frozen text states.
- `biomed.imaging.diffusion.vae_stage`: stage 1 of training, the VAE.
- `biomed.imaging.diffusion.train`: ``biomed train-diffusion`` (data, stage 2 through the shared
  engine, validation, the command).
- `biomed.imaging.diffusion.sample`: the ``Generator`` contract, ``PipelineGenerator``, sampling
  with the divergence guard, and ``biomed generate``.
- `biomed.imaging.diffusion.evaluate`: ``biomed evaluate-generation`` (suites, instruments,
  scoring, tables; the command in ``evaluate.command``).
"""
