"""The scan stage, the only side that imports torch: sources, decoding, models, the opinion methods (ascent,
probe words), relevancy, heatmap statistics and the pipeline that writes the store."""
