"""Text-to-chest-X-ray latent diffusion in the manner of RoentGen (Stable Diffusion's layout).

- `biomed.imaging.diffusion.model`: the components (VAE, UNet, text encoder, tokenizer,
  schedulers), the ``pipeline/`` folder (save, load, sample) and its model card.
- `biomed.imaging.diffusion.text_encoders`: ``clip`` | ``pubmed_lm`` | ``minilm``.
- `biomed.imaging.diffusion.train`: ``biomed train-diffusion`` (VAE stage, cached latents,
  UNet + text encoder stage through the shared engine).
- `biomed.imaging.diffusion.sample`: ``biomed generate``.
- `biomed.imaging.diffusion.evaluate`: ``biomed evaluate-generation``.
"""
