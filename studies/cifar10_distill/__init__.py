"""The CIFAR-10 distillation study (results/cifar10-distill-plan.md): its decision rule."""
