"""The chapter's loop (seed chapter 7, "Neural style transfer"), copied from the project's
reference transcription so that the fidelity test needs nothing outside tests/.

Kept as close to the chapter's text as a function allows: five forward passes per step,
targets recomputed every step, in-place ReLUs, AvgPool2d replacing MaxPool2d.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
from PIL import Image


def image_to_tensor(path, image_dimension):
    img = Image.open(path).convert("RGB")
    t = torchvision.transforms.Compose(
        [torchvision.transforms.Resize(image_dimension), torchvision.transforms.ToTensor()]
    )
    return t(img).unsqueeze(0).to(torch.device("cpu"), torch.float)


def gram_matrix(ip):
    num_batch, num_channels, height, width = ip.size()
    feats = ip.view(num_batch * num_channels, width * height)
    gram_mat = torch.mm(feats, feats.t())
    return gram_mat.div(num_batch * num_channels * width * height)


def chapter_losses(content, style, weights, *, steps, size, init="content", seed=0,
                   wt_style=1e6, wt_content=1.0, lr=0.1):
    """Rows (step, style_loss, content_loss, total_loss, elapsed_s) of the chapter's loop."""
    import time

    torch.manual_seed(seed)
    style_image = image_to_tensor(style, size)
    content_image = image_to_tensor(content, size)
    vgg = torchvision.models.vgg19()
    state = torch.load(weights, map_location="cpu")
    vgg.load_state_dict(state, strict=any(k.startswith("classifier.") for k in state))
    vgg19_model = vgg.features
    for p in vgg19_model.parameters():
        p.requires_grad_(False)
    conv_indices = []
    for i in range(len(vgg19_model)):
        if vgg19_model[i]._get_name() == "MaxPool2d":
            vgg19_model[i] = nn.AvgPool2d(
                kernel_size=vgg19_model[i].kernel_size, stride=vgg19_model[i].stride,
                padding=vgg19_model[i].padding,
            )
        if vgg19_model[i]._get_name() == "Conv2d":
            conv_indices.append(i)
    conv_indices = dict(enumerate(conv_indices, 1))
    layers = {1: "s", 2: "s", 3: "s", 4: "sc", 5: "s"}
    vgg_layers = nn.ModuleList(vgg19_model)
    last_layer_idx = conv_indices[max(layers.keys())]
    model = nn.Sequential(*vgg_layers[: last_layer_idx + 1])

    if init == "content":
        ip_image = content_image.clone()
    else:
        ip_image = torch.randn(content_image.data.size())
    opt = optim.Adam([ip_image.requires_grad_()], lr=lr)
    rows = []
    t0 = time.perf_counter()
    for epoch in range(1, steps + 1):
        ip_image.data.clamp_(0, 1)
        opt.zero_grad()
        sl = 0
        cl = 0
        for k in layers.keys():
            if "c" in layers[k]:
                target = model[: conv_indices[k] + 1](content_image).detach()
                ip = model[: conv_indices[k] + 1](ip_image)
                cl += torch.nn.functional.mse_loss(ip, target)
            if "s" in layers[k]:
                target = gram_matrix(model[: conv_indices[k] + 1](style_image)).detach()
                ip = gram_matrix(model[: conv_indices[k] + 1](ip_image))
                sl += torch.nn.functional.mse_loss(ip, target)
        sl *= wt_style
        cl *= wt_content
        total = sl + cl
        total.backward()
        opt.step()
        rows.append((epoch, sl.item(), cl.item(), total.item(), time.perf_counter() - t0))
    return rows
