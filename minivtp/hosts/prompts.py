"""Prompt templates of PLLaVA and Tarsier, as their own inference code builds them (docs/checkpoints.md).

Each returns a string with ONE video placeholder, `<image>`, which `VideoLLM.prompt` replaces with all the
video's tokens. Everything before it is the prefix; everything after it, "ASSISTANT:" included, is what
LLM-VTP counts as question rows.

    >>> pllava_prompt("What is he doing?")
    'USER:<image> What is he doing? ASSISTANT:'
"""

VIDEO = "<image>"

# PLLaVA's tasks/eval/eval_utils.py: Conversation(system, roles, sep, mm_token, mm_style). get_prompt() joins
#   system + sep[0], then role + message + sep for each message, and the assistant role at the end.
SYSTEM_VCG = ("You are Video-ChatGPT, a large vision-language assistant. You are able to understand the video "
              "content that the user provides, and assist the user with a variety of tasks using natural language."
              "Follow the instructions carefully and explain your answers in detail based on the provided video.")
SYSTEM_MVBENCH = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
                  "movement of objects, and the action and pose of persons. Based on your observations, select the "
                  "best option that accurately addresses the question.\n")
VIDEOQA_PRE = ("The input consists of a sequence of key frames from a video. Answer the question concisely first "
               "and followed by significant events, characters, or objects that appear throughout the frames. "
               "Question:")

# MVBench's prompt pieces as PLLaVA's eval writes them (pllava_eval_mvbench.py run(), lines 178 and 225)
POST_QUERY = "\nOnly give the best option."
ANSWER_PROMPT = "Best option:("

PLLAVA_TEMPLATES = {
    # name: (system, user role, video alone in its own message?, video token, pre-query, post-query, answer prompt)
    "plain": ("", "USER:", False, "<image>", None, None, None),  # the demo's conv_mode
    "eval_mvbench": (SYSTEM_MVBENCH, "USER: ", True, "<image>\n", None, None, "Best option:("),
    "eval_vcgbench": (SYSTEM_VCG, "USER: ", True, "<image>\n", None, None, None),
    "eval_videoqabench": ("", "USER: ", False, "<image>\n", VIDEOQA_PRE, "\n", "\nAnswer: In the video,"),
}


def pllava_prompt(question: str, template: str = "plain") -> str:
    if template not in PLLAVA_TEMPLATES:
        raise ValueError(f"template {template!r} is not one of {', '.join(PLLAVA_TEMPLATES)}")
    system, user, alone, mm, pre, post, answer = PLLAVA_TEMPLATES[template]
    query = question
    if post is not None:
        query = f"{query} {post}"
    if pre is not None:
        query = f"{pre} {query}"
    messages = [mm, query] if alone else [f"{mm} {query}"]
    text = system + " " if system else ""
    for m in messages:
        text += user + m + " "  # sep[user] is one space
    text += "ASSISTANT:"
    if answer:
        text += answer
    return text


def tarsier_prompt(question: str) -> str:
    """Tarsier's Processor.process_prompt: 'USER: <video> question ASSISTANT: ', <video> -> one <image> per
    frame. The frames are consecutive, so here one placeholder stands for all of them."""
    return f"USER: {VIDEO} {question.strip()} ASSISTANT: "


# LLaVA-NeXT's conv_templates["qwen_1_5"] (llava/conversation.py, conv_qwen, SeparatorStyle.CHATML): the prompt
# LLaVA-OneVision and LLaVA-Video are evaluated with; the video placeholder starts the user's message.
QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant."


def qwen_prompt(question: str, placeholder: str = "<video>") -> str:
    """
    >>> qwen_prompt("Why?")
    '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<video>\\nWhy?<|im_end|>\\n<|im_start|>assistant\\n'
    """
    return f"{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n{placeholder}\n{question}<|im_end|>\n<|im_start|>assistant\n"


def qwen_vl_prompt(question: str) -> str:
    """Qwen2.5-VL's chat template for one user turn, a video then the question, and the assistant's turn opened
    (minivtp/hosts/qwen2_5_vl.py expands the one <|video_pad|>).

    >>> qwen_vl_prompt("Why?")
    '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<|vision_start|><|video_pad|><|vision_end|>Why?<|im_end|>\\n<|im_start|>assistant\\n'
    """
    video = "<|vision_start|><|video_pad|><|vision_end|>"
    return f"{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n{video}{question}<|im_end|>\n<|im_start|>assistant\n"


def build_prompt(kind: str, question: str, template: str = None, placeholder: str = "<image>") -> str:
    if kind == "tarsier":
        return tarsier_prompt(question)
    if kind in ("llava-onevision", "llava-video"):
        return qwen_prompt(question, placeholder)
    if kind == "qwen2.5-vl":
        return qwen_vl_prompt(question)
    return pllava_prompt(question, template or "plain")


# -- text chat, for plain language models (python -m minivtp generate --chat) -----------------------------------

# Vicuna v1.1's conversation (FastChat's "vicuna_v1.1"): a system sentence, then "USER: ... ASSISTANT:"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")


def chat_prompt(question: str, chatml: bool, system: str = None) -> str:
    """One user turn and the assistant's cue: ChatML (SmolLM2, Qwen2: the tokenizer has <|im_start|>) or Vicuna's.

        >>> chat_prompt("Hi?", chatml=True)
        '<|im_start|>user\\nHi?<|im_end|>\\n<|im_start|>assistant\\n'
        >>> chat_prompt("Hi?", chatml=False, system="Be brief.")
        'Be brief. USER: Hi? ASSISTANT:'

    ChatML has no system turn unless one is given (SmolLM2's own template would add "You are a helpful AI
    assistant named SmolLM..."); Vicuna always has one, its default above.
    """
    if chatml:
        head = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
        return f"{head}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return f"{VICUNA_SYSTEM if system is None else system} USER: {question} ASSISTANT:"
