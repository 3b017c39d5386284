"""Only here to ship the top-level recipes/ and hw_targets/ folders inside the wheel."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["quantforge", "quantforge.*"])
    + ["quantforge.shipped_recipes", "quantforge.shipped_targets"],
    package_dir={"quantforge.shipped_recipes": "recipes", "quantforge.shipped_targets": "hw_targets"},
)
