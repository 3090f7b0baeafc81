"""Gradio demo on sampling's pipeline (not built yet)."""
