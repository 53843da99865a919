"""The mini web: a synthetic, deterministic Common Crawl slice with known ground truth.

generate_web(cfg.web, out_dir) in generate.py writes it; serve_in_background(out_dir) in server.py serves it.
Nothing is imported here, so `openaim web --help` stays light.
"""
