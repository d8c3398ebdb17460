"""Builds the native kernel modules of the `kernels` package.

kernels._C       C++ CPU kernels (csrc/cpu), always. The per-ISA translation
                 units get their own -m flags (AVX2, AVX-512) and the module
                 picks one at run time, so the binary runs on any x86-64.
kernels._C_cuda  CUDA kernels (csrc/cuda), when a CUDA toolkit is found
                 (CUDA_HOME, CUDA_PATH, nvcc on PATH, or /usr/local/cuda).

Neither module is built against PyTorch: they take raw pointers, so one build
serves any torch version. Environment:
  REWARD_ENGINE_CUDA_ARCHS  semicolon/comma list of SM versions (default "80;89;90a")
  REWARD_ENGINE_SKIP_CUDA=1 do not build kernels._C_cuda even if a toolkit exists
  CUBLAS_HOME               a directory with include/cublasLt.h and lib/libcublasLt.so*
                            (default: the toolkit, then the `nvidia-cublas` wheel's
                            nvidia/cublas or nvidia/cu13 folder); without cuBLASLt,
                            kernels._C_cuda is built without fp8_gemm
"""

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pybind11
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# -ffp-contract=off: a fused multiply-add only where a kernel asks for one, so the
# kernels round exactly like the torch reference where the docs say they match.
CXX_FLAGS = [
    "-O3",
    "-g0",
    "-std=c++17",
    "-fvisibility=hidden",
    "-ffp-contract=off",
    "-Wall",
    "-Wextra",
]
X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c"]
AVX512_FLAGS = [
    *AVX2_FLAGS,
    *["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
    # GCC 12 warns about _mm512_undefined_* inside its own intrinsic headers
    "-Wno-maybe-uninitialized",
]
# Flags apply to one translation unit each (see csrc/cpu/dtype.h for why that is safe).
ISA_FLAGS = {
    "csrc/cpu/kernels_avx2.cpp": AVX2_FLAGS,
    "csrc/cpu/kernels_avx512.cpp": AVX512_FLAGS,
    "csrc/cpu/kernels_avx512_bf16.cpp": AVX512_FLAGS + ["-mavx512bf16"],
    "csrc/cpu/int8_gemm_avx2.cpp": AVX2_FLAGS,
    "csrc/cpu/int8_gemm_avx512_vnni.cpp": AVX512_FLAGS + ["-mavx512vnni"],
    "csrc/cpu/int8_gemm_amx.cpp": AVX512_FLAGS + ["-mamx-tile", "-mamx-int8"],
    "csrc/cpu/kernels_amx_bf16.cpp": AVX512_FLAGS + ["-mavx512bf16", "-mamx-tile", "-mamx-bf16"],
}
DEFAULT_CUDA_ARCHS = "80;89;90a"


def log(message: str) -> None:
    print(f"reward-engine setup: {message}", flush=True)


def cpu_extension() -> Extension:
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/cpu").glob("*.cpp"))
    macros = []
    if not X86:
        sources = [s for s in sources if s not in ISA_FLAGS]
        macros.append(("REWARD_ENGINE_SCALAR_ONLY", "1"))
    return Extension(
        "kernels._C",
        sources=sources,
        include_dirs=[pybind11.get_include()],
        define_macros=macros,
        extra_compile_args=CXX_FLAGS,
        depends=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/cpu").glob("*.h")),
        language="c++",
    )


def find_cuda_home() -> Path | None:
    """First toolkit with nvcc and headers: CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for candidate in filter(None, candidates):
        home = Path(candidate)
        if (home / "bin/nvcc").exists() and (home / "include/cuda_runtime.h").exists():
            return home
    return None


def cudart_dir(cuda_home: Path) -> Path:
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        if (cuda_home / sub / "libcudart_static.a").exists():
            return cuda_home / sub
    raise SystemExit(
        f"{cuda_home} has no libcudart_static.a; set CUDA_HOME or REWARD_ENGINE_SKIP_CUDA=1"
    )


def cuda_archs() -> list[str]:
    value = os.environ.get("REWARD_ENGINE_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)
    archs = [a.strip().removeprefix("sm_") for a in re.split(r"[;, ]+", value) if a.strip()]
    for arch in archs:
        if not re.fullmatch(r"\d+[af]?", arch):
            raise SystemExit(f"REWARD_ENGINE_CUDA_ARCHS: {arch!r} is not an SM version like 90a")
    return archs


def find_cublaslt(cuda_home: Path) -> tuple[Path, Path, str] | None:
    """(include dir, library dir, library file) of cuBLASLt, or None.

    Looks in CUBLAS_HOME, the toolkit, then the nvidia-cublas wheel (nvidia/cublas for
    the CUDA 12 wheels, nvidia/cu13 for CUDA 13) wherever the `nvidia` namespace
    package is importable.
    """
    bases = [Path(os.environ["CUBLAS_HOME"])] if os.environ.get("CUBLAS_HOME") else []
    bases.append(cuda_home)
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        bases += [Path(root) / "cublas", Path(root) / "cu13", Path(root) / "cu12"]
    for base in bases:
        if not (base / "include/cublasLt.h").exists():
            continue
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            libs = sorted((base / sub).glob("libcublasLt.so*"), key=lambda p: len(p.name))
            if libs:
                return base / "include", base / sub, libs[0].name
    return None


class CUDAExtension(Extension):
    """An extension whose .cu sources are compiled by nvcc from cuda_home."""

    def __init__(self, name: str, sources: list[str], cuda_home: Path, **kwargs):
        self.nvcc_include_dirs = kwargs.pop("nvcc_include_dirs", [])
        super().__init__(name, sources, **kwargs)
        self.cuda_home = cuda_home


def cuda_extension() -> Extension | None:
    if os.environ.get("REWARD_ENGINE_SKIP_CUDA", "") not in ("", "0"):
        log("REWARD_ENGINE_SKIP_CUDA is set; skipping kernels._C_cuda")
        return None
    cuda_home = find_cuda_home()
    if cuda_home is None:
        log("no CUDA toolkit found; skipping kernels._C_cuda")
        return None
    folder = ROOT / "csrc/cuda"
    sources = sorted(
        str(p.relative_to(ROOT)) for p in folder.iterdir() if p.suffix in (".cu", ".cpp")
    )
    depends = sorted(
        str(p.relative_to(ROOT)) for p in folder.iterdir() if p.suffix in (".h", ".cuh")
    )
    macros, link_args, nvcc_includes, library_dirs = [], [], [], []
    cublaslt = find_cublaslt(cuda_home)
    if cublaslt is None:
        log(
            "no cuBLASLt found (pip install nvidia-cublas, or set CUBLAS_HOME); "
            "building kernels._C_cuda without the cuBLASLt fp8_gemm"
        )
        sources.remove("csrc/cuda/fp8_gemm.cu")
    else:
        include, lib, name = cublaslt
        log(f"kernels._C_cuda: fp8_gemm via cuBLASLt ({include}, {lib / name})")
        macros.append(("REWARD_ENGINE_HAVE_CUBLASLT", "1"))
        nvcc_includes.append(str(include))
        library_dirs.append(str(lib))
        # linked dynamically, found at run time through the rpath
        link_args += [f"-l:{name}", f"-Wl,-rpath,{lib}"]
    return CUDAExtension(
        "kernels._C_cuda",
        sources=sources,
        cuda_home=cuda_home,
        include_dirs=[pybind11.get_include()],
        nvcc_include_dirs=nvcc_includes,
        define_macros=macros,
        library_dirs=library_dirs,
        extra_compile_args=CXX_FLAGS,
        extra_link_args=link_args,
        depends=depends,
        language="c++",
    )


class BuildExt(build_ext):
    """Compiles each source with its own flags, in parallel, and nvcc for .cu files."""

    def build_extension(self, ext: Extension) -> None:
        ext_path = Path(self.get_ext_fullpath(ext.name))
        inputs = [ROOT / s for s in ext.sources + list(ext.depends)]
        # the target list is an input too: a changed REWARD_ENGINE_CUDA_ARCHS rebuilds
        stamp = Path(self.build_temp) / f"{ext.name}.targets"
        targets = ""
        if isinstance(ext, CUDAExtension):
            targets = " ".join(cuda_archs()) + (" +cublaslt" if ext.define_macros else "")
        if (
            not self.force
            and ext_path.exists()
            and stamp.exists()
            and stamp.read_text() == targets
            and all(p.stat().st_mtime <= ext_path.stat().st_mtime for p in inputs)
        ):
            log(f"{ext.name} is up to date")
            return
        if isinstance(ext, CUDAExtension):
            log(
                f"building {ext.name} with nvcc {ext.cuda_home / 'bin/nvcc'} for sm_{', sm_'.join(cuda_archs())}"
            )
        else:
            log(f"building {ext.name} with {self.compiler.compiler_so[0]}")
        Path(self.build_temp).mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            objects = list(pool.map(lambda src: self._compile(ext, src), ext.sources))
        libraries, library_dirs = self.get_libraries(ext), list(ext.library_dirs)
        if isinstance(ext, CUDAExtension):
            # static cudart: the module needs only the driver (libcuda) at run time
            library_dirs.append(str(cudart_dir(ext.cuda_home)))
            libraries += ["cudart_static", "rt", "pthread", "dl"]
        ext_path.parent.mkdir(parents=True, exist_ok=True)
        self.compiler.link_shared_object(
            objects,
            str(ext_path),
            libraries=libraries,
            library_dirs=library_dirs,
            extra_postargs=list(ext.extra_link_args),
            export_symbols=self.get_export_symbols(ext),
            build_temp=self.build_temp,
            target_lang="c++",
        )
        stamp.write_text(targets)

    def _compile(self, ext: Extension, source: str) -> str:
        if source.endswith(".cu"):
            return self._compile_cuda(ext, source)
        [obj] = self.compiler.compile(
            [source],
            output_dir=self.build_temp,
            macros=ext.define_macros,
            include_dirs=ext.include_dirs,
            extra_postargs=list(ext.extra_compile_args) + ISA_FLAGS.get(source, []),
            depends=ext.depends,
        )
        return obj

    def _compile_cuda(self, ext: CUDAExtension, source: str) -> str:
        obj = str(Path(self.build_temp) / (source + ".o"))
        Path(obj).parent.mkdir(parents=True, exist_ok=True)
        gencode = []
        for arch in cuda_archs():
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        cmd = [
            str(ext.cuda_home / "bin/nvcc"), "-c", source, "-o", obj,
            "-O3", "-std=c++17", "--expt-relaxed-constexpr",
            *(f"-I{d}" for d in ext.nvcc_include_dirs),
            "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
            *gencode,
        ]  # fmt: skip
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        return obj


def extensions() -> list[Extension]:
    exts = [cpu_extension()]
    cuda = cuda_extension()
    if cuda is not None:
        log(f"building kernels._C_cuda with nvcc from {cuda.cuda_home}")
        exts.append(cuda)
    return exts


if sys.platform == "win32":
    raise SystemExit("reward-engine builds on Linux (x86-64 for the vectorized CPU kernels)")

setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
