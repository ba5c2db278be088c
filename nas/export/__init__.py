"""A subnet out of the supernet: `subnet` writes the export folder (`nas export`), `measure` measures a
folder's model again (`nas eval`), `exported_model` reads and writes the folder, `deploy` the ONNX and
torch.export files."""
