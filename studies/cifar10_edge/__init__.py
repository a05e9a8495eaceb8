"""The CIFAR-10 edge study (results/cifar10-edge-plan.md): a pretrained teacher, a MobileNet student,
INT8 on a CPU; its decision rule."""
