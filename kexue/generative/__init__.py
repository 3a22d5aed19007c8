"""Generative models: the GAN line from DCGAN to SELF-MOD, GLANN, NVAE, and offline metrics.

References:
    https://kexue.fm/archives/6549 (从DCGAN到SELF-MOD:GAN的模型架构发展一览)
    https://kexue.fm/archives/6394 (非对抗式生成模型GLANN的简单介绍)
    https://kexue.fm/archives/7574 (强大的NVAE:以后再也不能说VAE生成的图像模糊了)
"""
