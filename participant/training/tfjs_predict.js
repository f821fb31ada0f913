// Run a TensorFlow.js graph model on inputs under Node.js with TF.js's pure-JavaScript CPU
// backend: node tfjs_predict.js MODEL_DIR INPUTS.json OUTPUTS.json (JSON arrays, float32 values).
// participant/training/tfjs.py runs it with NODE_PATH set to the packages make tfjs-venv
// installs (.venv-tfjs/node/node_modules) to check a converted model against Keras.
"use strict";

const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs-core");
require("@tensorflow/tfjs-backend-cpu");
const converter = require("@tensorflow/tfjs-converter");

// Reads model.json and its weight shards from a directory: the browser build of TF.js loads over
// HTTP only, and the file:// loader belongs to tfjs-node, which needs a native TensorFlow.
function directoryLoader(dir) {
  return {
    load: async () => {
      const manifest = JSON.parse(fs.readFileSync(path.join(dir, "model.json"), "utf8"));
      const weightSpecs = [];
      const shards = [];
      for (const group of manifest.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const shard of group.paths) shards.push(fs.readFileSync(path.join(dir, shard)));
      }
      const weights = Buffer.concat(shards);
      return {
        format: manifest.format,
        generatedBy: manifest.generatedBy,
        convertedBy: manifest.convertedBy,
        modelTopology: manifest.modelTopology,
        signature: manifest.signature,
        userDefinedMetadata: manifest.userDefinedMetadata,
        modelInitializer: manifest.modelInitializer,
        weightSpecs,
        weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength),
      };
    },
  };
}

async function main() {
  const [dir, inputsPath, outputsPath] = process.argv.slice(2);
  await tf.setBackend("cpu");
  const model = await converter.loadGraphModel(directoryLoader(dir));
  const inputs = tf.tensor(JSON.parse(fs.readFileSync(inputsPath, "utf8")), undefined, "float32");
  const outputs = model.predict(inputs);
  if (!(outputs instanceof tf.Tensor)) throw new Error("the model has more than one output");
  fs.writeFileSync(outputsPath, JSON.stringify(await outputs.array()));
}

main().catch((error) => {
  console.error(String(error && error.message ? error.message : error));
  process.exit(1);
});
