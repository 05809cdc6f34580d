"""Paper 2 (Kadkhodaie, Guth, Mallat, Simoncelli 2023): multi-scale local conditional models.

- `wavelets`: the orthonormal (or averaging) Haar pyramid x -> (x_J, d_{J-1}, ..., d_0), its inverse, log-det;
- `conditional`: coarse-to-fine denoising, the multi-scale log-likelihood, and the networks' objectives;
- `train`: one network per call (family, scale, rf), through `image_density.train`;
- `sampling`: the release's coarse-to-fine sampler, super-resolution.
Its networks live with the others in `image_density.models` (`cnn`, `local_energy`).
"""
