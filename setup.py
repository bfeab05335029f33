from setuptools import find_packages, setup

setup(
    name="leebert_plugin",
    version="0.1.0",
    description="Early-exit BERT/RoBERTa (LeeBERT, SmartBERT, PABEE, DeeBERT) as a fairseq plugin",
    packages=find_packages(include=["leebert_plugin", "leebert_plugin.*"]),
    python_requires=">=3.8",
    install_requires=["fairseq", "torch", "numpy", "sentencepiece", "tokenizers", "safetensors", "hydra-core"],
    extras_require={"test": ["pytest"]},
)
