"""The synthetic-augmentation loop (`biomed augment`) and its Dataset plugin.

- `biomed.augment.sweep`: the grid of cells, the step budget, the synthetic cache, the run.
- `biomed.augment.cell`: one classifier fit on a real subset plus synthetic images.
- `biomed.augment.report`: results.csv, metrics.json and report.html from the cells' folders.
- `biomed.augment.plugin`: `SyntheticAugmented`, a `torch.utils.data.Dataset` wrapper that adds
  synthetic samples to any classifier's dataset.

Nothing is imported here, so that importing the plugin does not import the sweep (and Hydra).
"""
