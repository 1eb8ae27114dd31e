import numpy as np
from PIL import Image

# Small ascent settings: enough steps to exercise tracking of the best sequences, seconds on a CPU.
FAST = dict(model="audit-tiny", pretrained="none", steps=3, candidates=4, views=4, workers=0, quiet=True)


def save_noise(path, size=(48, 40), seed=0, mode="RGB"):
    rs = np.random.RandomState(seed)
    arr = rs.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
