// Builds the bedside page into ../static/: index.html, app.js (one bundle), app.css.
// Usage: node build.mjs [--dev] [--watch]   (--dev: no minify, with source map)
import * as esbuild from "esbuild";
import { copyFile, mkdir, readFile, rm, stat } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(here, "../static");
const dev = process.argv.includes("--dev");
const watch = process.argv.includes("--watch");

const options = {
  absWorkingDir: here,
  entryPoints: [
    { in: "src/main.js", out: "app" },
    { in: "src/app.css", out: "app" },
    { in: "src/outlineWorker.js", out: "outlines" }, // a worker: no imports or exports left once bundled
  ],
  outdir: out,
  bundle: true,
  format: "esm",
  target: ["es2020", "chrome100", "safari15", "firefox100"],
  minify: !dev,
  sourcemap: dev ? "linked" : false,
  legalComments: dev ? "inline" : "eof",
  logLevel: "warning",
  metafile: true,
  define: { "process.env.NODE_ENV": dev ? '"development"' : '"production"' },
  plugins: [
    {
      // NiiVue's OME-Zarr reader (zarrita) imports numcodecs' blosc/zstd/lz4 WebAssembly codecs
      // (1.3 MB inlined) on demand. This page only loads NIfTI and MZ3, so they are left out.
      name: "no-zarr-codecs",
      setup(build) {
        build.onResolve({ filter: /^numcodecs\/(blosc|zstd|lz4)$/ }, (args) => ({ path: args.path, namespace: "stub" }));
        build.onLoad({ filter: /.*/, namespace: "stub" }, (args) => ({
          contents: `export default { fromConfig() { throw new Error(${JSON.stringify(args.path + " is not in this build")}); } };`,
          loader: "js",
        }));
      },
    },
    {
      // NiiVue 0.69 recomputes a gradient volume (blur and Sobel passes over the whole CT into two
      // more 3D textures) every time layer 0 is refreshed, although only the gradient-lit 3D shaders
      // sample it. This page uses the matte one, and in software WebGL that computation was most of
      // the first frame (2-5 s of 7). It is now skipped while the matte shader is active and no
      // gradient setting asks for it; setVolumeRenderIllumination() switches the shader and then
      // refreshes the layers, so the gradient is computed when it is needed.
      name: "niivue-lazy-gradient",
      setup(build) {
        build.onLoad({ filter: /[\\/]@niivue[\\/]niivue[\\/]build[\\/]niivue[\\/]index\.js$/ }, async (args) => {
          const src = await readFile(args.path, "utf8");
          const from = "      this.volumeTexture = outTexture;\n      this.gradientTexture = gradientGL({";
          const to =
            "      this.volumeTexture = outTexture;\n" +
            "      if (this.renderShader !== this.renderVolumeShader || this.gradientTextureAmount > 0 || this.opts.gradientOpacity > 0)\n" +
            "      this.gradientTexture = gradientGL({";
          if (src.split(from).length !== 2) throw new Error(`niivue-lazy-gradient: NiiVue's refreshLayers is not as expected in ${args.path}`);
          return { contents: src.replace(from, to), loader: "js" };
        });
      },
    },
    {
      name: "page",
      setup(build) {
        build.onEnd(async (result) => {
          if (result.errors.length) return;
          await copyFile(join(here, "src/index.html"), join(out, "index.html"));
        });
      },
    },
  ],
};

const t0 = Date.now();
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
  console.log(`watching; writing ${out}`);
} else {
  const result = await esbuild.build(options);
  if (process.argv.includes("--analyze")) console.log(await esbuild.analyzeMetafile(result.metafile));
  const sizes = [];
  for (const f of ["index.html", "app.js", "app.css", "outlines.js"]) sizes.push(`${f} ${((await stat(join(out, f))).size / 1024).toFixed(0)} KiB`);
  console.log(`built ${out} in ${Date.now() - t0} ms: ${sizes.join(", ")}`);
}
