"""`biomed evaluate-generation`: how good, how diverse and how faithful to the prompt are the
images of a text-to-X-ray diffusion model.

RoentGen's evaluation (Chambon et al. 2022, arXiv 2211.12737) measured image quality as FID in
domain feature spaces, diversity as MS-SSIM between samples of one prompt, and text alignment;
this command does the same on the held-out split of the data (``data.split: test``) and adds
what none of those measures: whether the image shows what the prompt says, measured with the
project classifier on prompts whose ground truth is exact (the phantom's findings).

1. **FID** between the real held-out images and images generated from their reports (one per
   report), in the classifier's penultimate-layer features (a forward hook on the input of its
   head) and in the CXR-CLIP image tower's normalised embeddings (`instruments.frechet_distance`).
   Reference: FID between two renders of the same reports (the floor at this N; FID is biased
   upwards at small N, so N is reported beside it).
2. **MS-SSIM diversity**: ``samples_per_prompt_diversity`` samples per prompt (other seeds), mean
   pairwise MS-SSIM (lower = more diverse); reference: the renders of the same report.
3. **CLIP score** (x100, clipped at 0) of generated image / prompt pairs in the CXR-CLIP space;
   reference: the real image / report pairs.
4. **Prompt fidelity per finding**: the classifier's AUROC at telling images whose prompt states a
   finding (the report's exact phantom labels) from images whose prompt does not, with bootstrap
   95% CIs, split by the prompt's source (IU report / template) when both occur; reference: the
   same classifier on the real held-out images (the ceiling). With ``eval.text_check`` (default)
   a prompt whose text denies or hedges a finding its tags give it, or affirms or hedges one
   they do not, is left out of that finding's AUROC (`biomed.imaging.reports.mentions.text_checked_labels`:
   "no definite pleural effusion seen" tagged ``Pleural Effusion``); the AUROCs on the tags
   alone are reported beside them (``fidelity_tag_labels``).
5. **Laterality suite**: templated prompts (`biomed.imaging.reports.templates.write_report`) for left and right
   effusion and pneumothorax; accuracy of the classifier's side call (``p(<f>_left) >
   p(<f>_right)`` is "left").
6. **Negation suite**: pairs of a normal report ("No pleural effusion or pneumothorax. Heart size
   is normal. ...") and a report stating the finding, both written from one writer seed and
   sampled with one image seed; the share of pairs where the negated prompt gives the lower
   probability of the finding (a tie counts one half: a prompt-blind model scores 0.5).

Everything is built on a generator callable ``generate(prompts, seeds) -> N x H x W images in
[0, 1]`` (or `sample.Samples` with divergence flags), so it runs without a diffusion model in
tests; the command makes a `sample.PipelineGenerator` from ``model_dir``. The run folder gets
``metrics.json``, ``table.md`` (for docs/results.md), ``scores.csv`` (each scored image's prompt,
labels and classifier probabilities), ``grid.png`` (real | samples per prompt) and
``report.html``.

The modules, in the order the evaluation uses them:

- `settings`: the ``eval`` config node (`EvalSettings`).
- `suites`: which prompts and seeds: held-out reports, the laterality and negation suites, the plan.
- `instruments`: Fréchet distance, MS-SSIM, CLIP score; the classifier and CXR-CLIP as feature
  extractors.
- `scoring`: AUROCs, the text check, side and negation scores, FID, diversity, flat numbers.
- `evaluation`: `evaluate_generation`, which ties them together.
- `tables`: ``table.md``, ``scores.csv``, ``grid.png``, ``report.html``.
- `command`: ``run(cfg)`` and the Hydra ``main`` of ``biomed evaluate-generation`` (imported on
  its own, not here, so that the library does not import Hydra).
"""

from biomed.imaging.diffusion.evaluate.evaluation import (
    SCORE_COLUMNS,
    Evaluation,
    evaluate_generation,
    generate_all,
    score_rows,
)
from biomed.imaging.diffusion.evaluate.instruments import ClassifierTool, penultimate_layer
from biomed.imaging.diffusion.evaluate.scoring import flat_metrics
from biomed.imaging.diffusion.evaluate.settings import EvalSettings
from biomed.imaging.diffusion.evaluate.suites import (
    LATERALITY_FINDINGS,
    NEGATION_FINDINGS,
    Case,
    HeldOut,
    NegationPair,
    held_out_prompts,
    laterality_cases,
    negation_pairs,
)
from biomed.imaging.diffusion.evaluate.tables import markdown_table, write_outputs

__all__ = ["LATERALITY_FINDINGS", "NEGATION_FINDINGS", "SCORE_COLUMNS", "Case", "ClassifierTool",
           "EvalSettings", "Evaluation", "HeldOut", "NegationPair", "evaluate_generation",
           "flat_metrics", "generate_all", "held_out_prompts", "laterality_cases",
           "markdown_table", "negation_pairs", "penultimate_layer", "score_rows",
           "write_outputs"]
