"""Biomedical language model: PubMed corpus, tokenizer, GPT-2 model, training, evaluation."""
