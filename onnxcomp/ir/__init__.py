"""The graph and what is computed from it: conversion between ModelProto and the
onnx-graphsurgeon IR, weightless models for cheap checks, graph helpers, op-rule tables
and the cost model."""
