"""The networks: the mel front end and timm backbones with their heads (`model`), pretrained weights from local
files (`pretrained`), exports to the kernel's runtimes and eager prediction of finished runs (`export`,
`predict`)."""
